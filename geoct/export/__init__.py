"""GIS layers from prediction rasters: polygons, styles, STAC items and evaluation."""
