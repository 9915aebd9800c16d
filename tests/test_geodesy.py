import math

import pytest
import rasterio
import rasterio.crs
from pyproj import CRS
from rasterio.transform import from_origin

from geoct.geodesy import ground_pixel_size, proj_crs

#: A Lambert azimuthal equal-area CRS centred on Berlin: no EPSG code.
CUSTOM = "+proj=laea +lat_0=52.5 +lon_0=13.4 +x_0=0 +y_0=0 +ellps=GRS80 +units=m +no_defs +type=crs"


@pytest.mark.parametrize(
    "code, transform",
    [
        (25833, from_origin(368000.0, 5808000.0, 0.05, 0.05)),
        (3857, from_origin(1490000.0, 6890000.0, 0.1, 0.1)),
        (4326, from_origin(13.4, 52.5, 1e-6, 1e-6)),
        (2263, from_origin(980000.0, 200000.0, 0.5, 0.5)),  # US survey feet
    ],
)
def test_epsg_crs_from_a_file_measures_as_its_definition(tmp_path, code, transform) -> None:
    """A CRS read from a GeoTIFF is taken from the EPSG database, with the same lengths."""
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 8, "height": 8, "count": 1, "dtype": "uint8"}
    with rasterio.open(path, "w", crs=f"EPSG:{code}", transform=transform, **profile):
        pass
    with rasterio.open(path) as src:
        crs = src.crs
    assert proj_crs(crs) == CRS.from_epsg(code)
    by_code = ground_pixel_size(crs, transform, 8, 8)
    by_definition = ground_pixel_size(CRS.from_wkt(crs.to_wkt()), transform, 8, 8)
    assert by_code == by_definition
    assert all(math.isfinite(v) and v > 0 for v in by_code)


def test_crs_without_epsg_code_is_parsed() -> None:
    crs = rasterio.crs.CRS.from_string(CUSTOM)
    parsed = proj_crs(crs)
    assert parsed.to_epsg() is None
    assert parsed.equals(CRS.from_proj4(CUSTOM))
    dx, dy = ground_pixel_size(crs, from_origin(0.0, 0.0, 0.2, 0.2), 100, 100)
    assert dx == pytest.approx(0.2, rel=1e-3) and dy == pytest.approx(0.2, rel=1e-3)
