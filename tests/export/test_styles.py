import xml.etree.ElementTree as ET

import pytest

from geoct.classes import POTSDAM, ClassTable
from geoct.export.styles import hex_color, raster_qml, raster_sld, vector_qml, vector_sld

SLD = "{http://www.opengis.net/sld}"
OGC = "{http://www.opengis.net/ogc}"


def parse_qml(text: str) -> ET.Element:
    assert text.startswith("<!DOCTYPE qgis")
    return ET.fromstring(text.split("\n", 1)[1])


def test_hex_color() -> None:
    assert hex_color((255, 0, 16)) == "#ff0010"


def test_raster_qml_palette_names_and_transparent_nodata(classes: ClassTable) -> None:
    root = parse_qml(raster_qml(classes))
    renderer = root.find("pipe/rasterrenderer")
    assert renderer is not None and renderer.get("type") == "paletted"
    entries = renderer.findall("colorPalette/paletteEntry")
    assert [e.get("label") for e in entries] == list(classes.names)
    assert [e.get("value") for e in entries] == ["0", "1", "2"]
    assert entries[0].get("color") == "#c83232"
    nodata = renderer.find("rasterTransparency/singleValuePixelList/pixelListEntry")
    assert nodata is not None and nodata.get("min") == "255"
    assert nodata.get("percentTransparent") == "100"


def test_vector_qml_categories() -> None:
    root = parse_qml(vector_qml(POTSDAM, field="cls"))
    renderer = root.find("renderer-v2")
    assert renderer is not None
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "cls"
    categories = renderer.findall("categories/category")
    assert [c.get("label") for c in categories] == list(POTSDAM.names)
    symbols = renderer.findall("symbols/symbol")
    assert len(symbols) == POTSDAM.num_classes
    colour = symbols[1].find("layer/Option/Option[@name='color']")
    assert colour is not None and colour.get("value") == "0,0,255,255"


def test_names_are_escaped(classes: ClassTable) -> None:
    text = vector_qml(classes)
    assert "water &amp; &lt;lake&gt;" in text
    root = parse_qml(text)
    assert root.findall("renderer-v2/categories/category")[2].get("label") == "water & <lake>"


def test_raster_sld_colormap(classes: ClassTable) -> None:
    root = ET.fromstring(raster_sld(classes))
    assert root.tag == f"{SLD}StyledLayerDescriptor"
    entries = root.findall(f".//{SLD}ColorMap/{SLD}ColorMapEntry")
    assert [e.get("quantity") for e in entries] == ["0", "1", "2", "255"]
    assert entries[2].get("label") == "water & <lake>"
    assert entries[-1].get("opacity") == "0.0"
    assert root.find(f".//{SLD}ColorMap").get("type") == "values"


@pytest.mark.parametrize("field", ["class_id", "klass"])
def test_vector_sld_rules(field: str, classes: ClassTable) -> None:
    root = ET.fromstring(vector_sld(classes, field=field))
    rules = root.findall(f".//{SLD}Rule")
    assert len(rules) == classes.num_classes
    for class_id, rule in enumerate(rules):
        assert rule.findtext(f".//{OGC}PropertyName") == field
        assert rule.findtext(f".//{OGC}Literal") == str(class_id)
        fill = rule.find(f".//{SLD}Fill/{SLD}CssParameter[@name='fill']")
        assert fill is not None and fill.text == hex_color(classes.colors[class_id])
