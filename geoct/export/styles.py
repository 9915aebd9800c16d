"""QGIS (QML) and GeoServer (SLD) styles for class rasters and class polygons.

Every function is a pure string builder: it takes a :class:`~geoct.classes.ClassTable`
and returns an XML document whose labels are the class names and whose colours are
the class colours. Text is escaped by :mod:`xml.etree.ElementTree`.
"""

import xml.etree.ElementTree as ET

from ..classes import RGB, ClassTable

#: QGIS version written into QML documents (any QGIS 3 reads them).
QGIS_VERSION = "3.28.0-Firenze"

#: Doctype line QGIS writes at the top of a QML file.
QML_DOCTYPE = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"

#: Outline colour of polygon symbols.
OUTLINE_RGB: RGB = (35, 35, 35)

#: Namespace declarations of an SLD 1.0.0 document.
SLD_NAMESPACES = {
    "version": "1.0.0",
    "xmlns": "http://www.opengis.net/sld",
    "xmlns:ogc": "http://www.opengis.net/ogc",
    "xmlns:xlink": "http://www.w3.org/1999/xlink",
    "xmlns:xsi": "http://www.w3.org/2001/XMLSchema-instance",
    "xsi:schemaLocation": "http://www.opengis.net/sld "
    "http://schemas.opengis.net/sld/1.0.0/StyledLayerDescriptor.xsd",
}


def hex_color(rgb: RGB) -> str:
    """Return an RGB triple as ``#rrggbb``.

    Args:
        rgb: Red, green and blue in 0..255.

    Returns:
        The lower-case hexadecimal colour.
    """
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, {k.rstrip("_"): v for k, v in attrib.items()})
    if text is not None:
        element.text = text
    return element


def _serialise(root: ET.Element, prefix: str = "") -> str:
    ET.indent(root)
    return prefix + ET.tostring(root, encoding="unicode") + "\n"


def _qml_root(categories: str) -> ET.Element:
    return ET.Element(
        "qgis",
        {
            "version": QGIS_VERSION,
            "styleCategories": categories,
            "hasScaleBasedVisibilityFlag": "0",
        },
    )


def raster_qml(classes: ClassTable) -> str:
    """Build a QGIS paletted (unique values) style for a class raster.

    Args:
        classes: Class ids, names and colours; the ignore index is drawn transparent.

    Returns:
        The QML document.
    """
    root = _qml_root("AllStyleCategories")
    pipe = _sub(root, "pipe")
    renderer = _sub(
        pipe,
        "rasterrenderer",
        type="paletted",
        band="1",
        opacity="1",
        alphaBand="-1",
        nodataColor="",
    )
    transparency = _sub(renderer, "rasterTransparency")
    pixels = _sub(transparency, "singleValuePixelList")
    nodata = str(classes.ignore_index)
    _sub(pixels, "pixelListEntry", min=nodata, max=nodata, percentTransparent="100")
    palette = _sub(renderer, "colorPalette")
    for class_id, (name, rgb) in enumerate(zip(classes.names, classes.colors, strict=True)):
        _sub(
            palette,
            "paletteEntry",
            value=str(class_id),
            color=hex_color(rgb),
            alpha="255",
            label=name,
        )
    _sub(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    _sub(pipe, "huesaturation", saturation="0", grayscaleMode="0", colorizeOn="0")
    _sub(pipe, "rasterresampler", maxOversampling="2")
    _sub(root, "blendMode", "0")
    return _serialise(root, QML_DOCTYPE)


def _fill_symbol(parent: ET.Element, name: str, rgb: RGB) -> None:
    properties = {
        "color": "{},{},{},255".format(*rgb),
        "joinstyle": "bevel",
        "offset": "0,0",
        "offset_unit": "MM",
        "outline_color": "{},{},{},255".format(*OUTLINE_RGB),
        "outline_style": "solid",
        "outline_width": "0.26",
        "outline_width_unit": "MM",
        "style": "solid",
    }
    symbol = _sub(
        parent, "symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0"
    )
    layer = _sub(symbol, "layer", class_="SimpleFill", enabled="1", pass_="0", locked="0")
    options = _sub(layer, "Option", type="Map")
    for key, value in properties.items():
        _sub(options, "Option", name=key, type="QString", value=value)
    for key, value in properties.items():
        _sub(layer, "prop", k=key, v=value)


def vector_qml(classes: ClassTable, field: str = "class_id") -> str:
    """Build a QGIS categorised fill style for class polygons.

    Args:
        classes: Class ids, names and colours.
        field: Integer attribute holding the class id.

    Returns:
        The QML document.
    """
    root = _qml_root("Symbology")
    renderer = _sub(
        root,
        "renderer-v2",
        type="categorizedSymbol",
        attr=field,
        symbollevels="0",
        enableorderby="0",
        forceraster="0",
        referencescale="-1",
    )
    categories = _sub(renderer, "categories")
    symbols = _sub(renderer, "symbols")
    for class_id, (name, rgb) in enumerate(zip(classes.names, classes.colors, strict=True)):
        _sub(
            categories,
            "category",
            value=str(class_id),
            symbol=str(class_id),
            label=name,
            render="true",
            type="long",
        )
        _fill_symbol(symbols, str(class_id), rgb)
    _sub(root, "blendMode", "0")
    _sub(root, "featureBlendMode", "0")
    _sub(root, "layerGeometryType", "2")
    return _serialise(root, QML_DOCTYPE)


def _sld_style(name: str, title: str) -> ET.Element:
    root = ET.Element("StyledLayerDescriptor", SLD_NAMESPACES)
    layer = _sub(root, "NamedLayer")
    _sub(layer, "Name", name)
    style = _sub(layer, "UserStyle")
    _sub(style, "Name", name)
    _sub(style, "Title", title)
    return root


def raster_sld(classes: ClassTable, name: str = "classes") -> str:
    """Build an SLD 1.0 style for a class raster (a ``values`` colour map).

    Args:
        classes: Class ids, names and colours; the ignore index is drawn transparent.
        name: Layer and style name.

    Returns:
        The SLD document.
    """
    root = _sld_style(name, "Land-cover classes")
    style = root.find("NamedLayer/UserStyle")
    rule = _sub(_sub(style, "FeatureTypeStyle"), "Rule")
    symbolizer = _sub(rule, "RasterSymbolizer")
    _sub(symbolizer, "Opacity", "1.0")
    colormap = _sub(symbolizer, "ColorMap", type="values")
    for class_id, (label, rgb) in enumerate(zip(classes.names, classes.colors, strict=True)):
        _sub(
            colormap,
            "ColorMapEntry",
            color=hex_color(rgb),
            quantity=str(class_id),
            label=label,
            opacity="1.0",
        )
    _sub(
        colormap,
        "ColorMapEntry",
        color="#000000",
        quantity=str(classes.ignore_index),
        label="nodata",
        opacity="0.0",
    )
    return _serialise(root)


def _css(parent: ET.Element, name: str, value: str) -> None:
    _sub(parent, "CssParameter", value, name=name)


def vector_sld(classes: ClassTable, name: str = "classes", field: str = "class_id") -> str:
    """Build an SLD 1.0 style for class polygons, one rule per class.

    Args:
        classes: Class ids, names and colours.
        name: Layer and style name.
        field: Integer attribute holding the class id.

    Returns:
        The SLD document.
    """
    root = _sld_style(name, "Land-cover polygons")
    feature_style = _sub(root.find("NamedLayer/UserStyle"), "FeatureTypeStyle")
    for class_id, (label, rgb) in enumerate(zip(classes.names, classes.colors, strict=True)):
        rule = _sub(feature_style, "Rule")
        _sub(rule, "Name", label)
        _sub(rule, "Title", label)
        equal = _sub(_sub(rule, "ogc:Filter"), "ogc:PropertyIsEqualTo")
        _sub(equal, "ogc:PropertyName", field)
        _sub(equal, "ogc:Literal", str(class_id))
        symbolizer = _sub(rule, "PolygonSymbolizer")
        _css(_sub(symbolizer, "Fill"), "fill", hex_color(rgb))
        stroke = _sub(symbolizer, "Stroke")
        _css(stroke, "stroke", hex_color(OUTLINE_RGB))
        _css(stroke, "stroke-width", "0.5")
    return _serialise(root)
