"""Ground distances and areas in metres, for rasters and polygons in any CRS.

Map units are metres on the ground only in a few well-behaved projections, and
even there only up to the projection's scale factor: a Web Mercator metre is
``1 / cos(latitude)`` ground metres, a degree of longitude shrinks towards the
poles. Everything geoct reports as a distance or an area is therefore measured
on the CRS's own ellipsoid:

* the pixel size of a raster is the length of the affine transform's column and
  row vectors (so rotated and sheared grids are measured correctly), in map
  units (:func:`pixel_size`) or as geodesic lengths of one pixel step at the
  scene centre, in metres (:func:`ground_pixel_size`);
* polygon areas are planar areas in the Lambert cylindrical equal-area projection
  of the same ellipsoid (exact for lon/lat pixel edges, which follow parallels and
  meridians), after densifying edges in the source CRS so that they keep their
  shape when projected; perimeters are geodesic lengths of the densified rings
  (:func:`ground_area_perimeter`).
"""

import math

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Geod, Transformer

#: Longest polygon edge kept straight when measuring, in metres on the ground
#: (edges are split into pieces no longer than this before reprojection).
DENSIFY_METRES = 1000.0

#: Metres per degree of arc on the equator, used to express :data:`DENSIFY_METRES` in degrees.
METRES_PER_DEGREE = 111_320.0


def pixel_size(transform: Affine) -> tuple[float, float]:
    """Return the ``(x, y)`` pixel size in map units: the lengths of the column and row vectors.

    For a north-up grid this is ``(a, -e)``; for rotated or sheared grids the
    affine's ``a`` and ``e`` alone understate it (a 90-degree rotation has
    ``a == e == 0``).

    Args:
        transform: Pixel-to-map affine transform.

    Returns:
        Length of one column step and of one row step, in CRS units.
    """
    return math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)


def proj_crs(crs: object) -> CRS:
    """Return *crs* (pyproj, rasterio, or any input pyproj takes) as a pyproj CRS.

    A CRS that is exactly an EPSG one (the EPSG authority in its definition, as
    GDAL reads GeoTIFFs) is taken from the EPSG database: PROJ then finds its
    conversion to lon/lat at once, where one parsed from WKT costs about 13 ms to
    parse and convert (a third of a small scene's set-up in ``geoct predict``).
    """
    if isinstance(crs, CRS):
        return crs
    to_epsg = getattr(crs, "to_epsg", None)
    code = to_epsg(confidence_threshold=100) if callable(to_epsg) else None
    return CRS.from_epsg(code) if code else CRS.from_user_input(crs)


def _geod(crs: CRS) -> Geod:
    ellipsoid = crs.ellipsoid
    if ellipsoid is None:
        return Geod(ellps="WGS84")
    return Geod(a=ellipsoid.semi_major_metre, b=ellipsoid.semi_minor_metre)


def _to_lonlat(crs: CRS) -> Transformer:
    return Transformer.from_crs(crs, crs.geodetic_crs or CRS.from_epsg(4326), always_xy=True)


def ground_pixel_size(
    crs: CRS | str, transform: Affine, width: int, height: int
) -> tuple[float, float]:
    """Return the ``(x, y)`` ground size of a pixel at the scene centre, in metres.

    The lengths are geodesic distances on the CRS's ellipsoid between the scene
    centre and the points one column and one row step away.

    Args:
        crs: The raster's CRS.
        transform: Pixel-to-map affine transform.
        width: Raster columns.
        height: Raster rows.

    Returns:
        Ground length of one column step and of one row step.
    """
    crs = proj_crs(crs)
    cx, cy = width / 2, height / 2
    points = [transform @ (cx, cy), transform @ (cx + 1, cy), transform @ (cx, cy + 1)]
    lon, lat = _to_lonlat(crs).transform([p[0] for p in points], [p[1] for p in points])
    geod = _geod(crs)
    _, _, dx = geod.inv(lon[0], lat[0], lon[1], lat[1])
    _, _, dy = geod.inv(lon[0], lat[0], lon[2], lat[2])
    return float(dx), float(dy)


def ground_gsd(crs: CRS | str, transform: Affine, width: int, height: int) -> float:
    """Return one ground sample distance in metres: the mean of the x and y pixel sizes."""
    dx, dy = ground_pixel_size(crs, transform, width, height)
    return (dx + dy) / 2


def densify_step(crs: CRS) -> float:
    """Return the edge length, in the units of *crs*, that corresponds to :data:`DENSIFY_METRES`."""
    if crs.is_geographic:
        return DENSIFY_METRES / METRES_PER_DEGREE
    factor = 1.0
    if crs.axis_info and crs.axis_info[0].unit_conversion_factor:
        factor = crs.axis_info[0].unit_conversion_factor
    return DENSIFY_METRES / factor


def _equal_area(crs: CRS, lon_0: float) -> Transformer:
    """Lon/lat degrees to the cylindrical equal-area projection of the CRS's ellipsoid."""
    ellipsoid = crs.ellipsoid
    a = ellipsoid.semi_major_metre if ellipsoid else 6378137.0
    b = ellipsoid.semi_minor_metre if ellipsoid else 6356752.314245179
    return Transformer.from_pipeline(
        "+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
        f"+step +proj=cea +lon_0={lon_0!r} +a={a!r} +b={b!r} +over"
    )


def _apply(transformer: Transformer, geoms: np.ndarray) -> np.ndarray:
    def xy(coords: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geoms, xy)


def _unwrap(lonlat: np.ndarray, crs: CRS) -> np.ndarray:
    """Keep a projected scene across the antimeridian contiguous in longitude.

    Longitudes come back wrapped to [-180, 180]; for a projected CRS a scene spanning
    more than 180 degrees is one that crosses the antimeridian, so longitudes more
    than 180 degrees from the median are shifted by 360. Geographic CRSs keep their
    own longitudes (a whole-world scene spans -180..180 on purpose).
    """
    if crs.is_geographic:
        return lonlat
    west, _, east, _ = shapely.total_bounds(lonlat)
    if east - west <= 180:
        return lonlat
    ref = float(np.median(shapely.get_coordinates(lonlat)[:, 0]))

    def shift(xy: np.ndarray) -> np.ndarray:
        lon = xy[:, 0]
        lon = np.where(lon - ref > 180, lon - 360, np.where(lon - ref < -180, lon + 360, lon))
        return np.column_stack([lon, xy[:, 1]])

    return shapely.transform(lonlat, shift)


def ground_area_perimeter(
    geoms: np.ndarray, crs: CRS | str | None
) -> tuple[np.ndarray, np.ndarray]:
    """Return the ground area (m²) and perimeter (m) of each polygon.

    Args:
        geoms: Polygons in map coordinates of *crs*.
        crs: Their CRS, or ``None``, in which case planar values in map units are
            returned.

    Returns:
        float64 areas and perimeters, one per polygon.
    """
    geoms = np.asarray(geoms, dtype=object)
    if crs is None:
        return shapely.area(geoms), shapely.length(geoms)
    if geoms.size == 0:
        return np.zeros(0), np.zeros(0)
    crs = proj_crs(crs)
    dense = shapely.segmentize(geoms, densify_step(crs))
    lonlat = _unwrap(_apply(_to_lonlat(crs), dense), crs)
    west, _, east, _ = shapely.total_bounds(lonlat)
    area = shapely.area(_apply(_equal_area(crs, (west + east) / 2), lonlat))
    geod = _geod(crs)
    perimeter = np.array(
        [sum(geod.line_length(*ring.xy) for ring in shapely.get_rings(g)) for g in lonlat],
        dtype=np.float64,
    )
    return np.asarray(area, dtype=np.float64), perimeter
