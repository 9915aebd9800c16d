"""Procedural synthetic scenes that look like ISPRS Potsdam tiles.

:func:`generate_tile` paints a small suburban neighbourhood: a grid of asphalt streets with lane
markings and sidewalks, blocks of grass with paved yards and parking lots, buildings with flat or
gabled roofs, trees with round textured crowns, cars on the streets and in parking lots, and
clutter (bare soil patches and small objects). Every painter writes the class label, the height
above ground and the four-band colour of its object, so labels, surface model and image always
agree.

The classes are separable, but not by colour alone: grey roofs share their colours with asphalt
and pavement (building vs impervious differ mostly in height), red roofs share theirs with red
paving, and grass and trees share their greens (low vegetation vs tree differ in height and canopy
texture). Vegetation is bright in the infrared band, roofs, streets and soil are not. Cast shadows
and sensor noise are added last.

Units:
    * Pixels are 5 cm (:data:`GSD`) and the grid is north-up in UTM zone 33N
      (:data:`CRS`), placed near Potsdam from the tile id like the real tiles.
    * Heights are metres: the terrain lies between 30 and 40 m, the normalised DSM holds the
      height above ground (roofs 6-20 m, trees 5-20 m, cars about 1.5 m, grass below 0.5 m).
    * Horizontal sizes are given in *scene metres*. Tiles of :data:`FULL_SCALE_SIZE` pixels
      or more are drawn at true scale (20 pixels per metre); smaller tiles show the same
      neighbourhood shrunk to fit (a 512 pixel tile covers about 150 scene metres), so that
      even small tiles hold streets, several buildings, trees, grass, cars and clutter.

The output is a deterministic function of ``(tile_id, seed, size)``.
"""

import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise

import affine
import numpy as np

from ..classes import POTSDAM

#: Ground sampling distance of the generated tiles, in metres per pixel.
GSD = 0.05

#: Coordinate reference system of the generated tiles (WGS 84 / UTM zone 33N).
CRS = "EPSG:32633"

#: Tiles with at least this many pixels per side are drawn at true scale.
FULL_SCALE_SIZE = 3000

#: Side of a full-size Potsdam tile (6000 px at 5 cm), in metres; the tile grid step.
TILE_EXTENT = 300.0

#: Easting and northing of the north-west corner of tile ``0_0``.
GRID_ORIGIN = (366000.0, 5808000.0)

IMPERVIOUS = POTSDAM.names.index("impervious_surfaces")
BUILDING = POTSDAM.names.index("building")
LOW_VEGETATION = POTSDAM.names.index("low_vegetation")
TREE = POTSDAM.names.index("tree")
CAR = POTSDAM.names.index("car")
CLUTTER = POTSDAM.names.index("clutter")

_ROAD, _SIDEWALK, _BLOCK = 0, 1, 2
_TILE_ID = re.compile(r"^(\d+)_(\d+)$")
_CAR_COLOURS = np.array(
    [
        [235, 235, 235, 220],
        [25, 25, 30, 30],
        [170, 172, 175, 160],
        [110, 112, 115, 100],
        [170, 30, 30, 120],
        [30, 50, 130, 60],
        [20, 40, 70, 40],
        [200, 180, 130, 170],
    ],
    dtype=np.float32,
)


@dataclass
class SyntheticTile:
    """One generated tile.

    Attributes:
        tile_id: Tile id, e.g. ``"2_10"``.
        rgbir: Image, uint8 (4, H, W), bands R, G, B, IR.
        dsm: Digital surface model, float32 (H, W), absolute heights in metres.
        ndsm: Normalised DSM, float32 (H, W), heights above ground in metres (``dsm - terrain``).
        labels: Class ids, uint8 (H, W), in :data:`geoct.classes.POTSDAM` order.
        transform: Pixel to map transform (5 cm pixels, north-up).
        crs: Coordinate reference system of ``transform``.
    """

    tile_id: str
    rgbir: np.ndarray
    dsm: np.ndarray
    ndsm: np.ndarray
    labels: np.ndarray
    transform: affine.Affine
    crs: str


@dataclass(frozen=True)
class _Box:
    """Axis-aligned rectangle in pixels, ``[r0, r1) x [c0, c1)``; may extend past the tile."""

    r0: int
    c0: int
    r1: int
    c1: int

    @classmethod
    def around(cls, cy: float, cx: float, half_h: float, half_w: float) -> "_Box":
        """Return the box of the given half sizes centred on ``(cy, cx)``."""
        return cls(round(cy - half_h), round(cx - half_w), round(cy + half_h), round(cx + half_w))

    def grow(self, d: int) -> "_Box":
        """Return the box grown by ``d`` pixels on every side."""
        return _Box(self.r0 - d, self.c0 - d, self.r1 + d, self.c1 + d)

    def clip(self, size: int) -> "_Box | None":
        """Return the part inside a ``size`` x ``size`` tile, or None if it is empty."""
        box = _Box(max(self.r0, 0), max(self.c0, 0), min(self.r1, size), min(self.c1, size))
        return box if box.r0 < box.r1 and box.c0 < box.c1 else None

    @property
    def slices(self) -> tuple[slice, slice]:
        """Row and column slices."""
        return slice(self.r0, self.r1), slice(self.c0, self.c1)


@dataclass(frozen=True)
class _Street:
    """A straight street across the tile.

    Attributes:
        vertical: True for a north-south street (a band of columns).
        centre: Centre line position in pixels (column if vertical, else row).
        half_road: Half the carriageway width in pixels.
        sidewalk: Sidewalk width on each side in pixels.
    """

    vertical: bool
    centre: float
    half_road: float
    sidewalk: float

    @property
    def half_width(self) -> float:
        """Half the width of carriageway plus sidewalks."""
        return self.half_road + self.sidewalk

    def band(self, half: float, size: int) -> _Box:
        """Return the box of the band of half width ``half`` around the centre line."""
        lo, hi = round(self.centre - half), round(self.centre + half)
        return _Box(0, lo, size, hi) if self.vertical else _Box(lo, 0, hi, size)


@dataclass
class _Canvas:
    """Per-tile working arrays shared by the painters.

    Attributes:
        labels: Class ids (H, W).
        ndsm: Height above ground in metres (H, W).
        image: Colour, float32 (4, H, W) on the 0-255 scale.
        zone: Street layout (road, sidewalk, block) (H, W).
        grain: Fine texture, about N(0, 1) (H, W).
        patches: Texture at the scale of a few scene metres, about N(0, 1) (H, W).
        unit: Pixels per scene metre.
    """

    labels: np.ndarray
    ndsm: np.ndarray
    image: np.ndarray
    zone: np.ndarray
    grain: np.ndarray
    patches: np.ndarray
    unit: float

    @property
    def size(self) -> int:
        """Tile side in pixels."""
        return self.labels.shape[0]

    def px(self, metres: float) -> float:
        """Convert scene metres to pixels."""
        return metres * self.unit

    def paint(
        self,
        box: _Box,
        label: int,
        colour: np.ndarray,
        height: float | np.ndarray,
        mask: np.ndarray | None = None,
        shade: float | np.ndarray = 1.0,
    ) -> None:
        """Paint an object inside ``box``, restricted to ``mask`` if given.

        Args:
            box: Area to paint, already clipped to the tile.
            label: Class id.
            colour: Base colour (4,) on the 0-255 scale.
            height: Height above ground, a scalar or an array of the box shape.
            mask: Pixels of the box that belong to the object.
            shade: Brightness factor, a scalar or an array of the box shape.
        """
        rs, cs = box.slices
        pixels = np.multiply.outer(colour, shade) if np.ndim(shade) else colour * shade
        if mask is None:
            self.labels[rs, cs] = label
            self.ndsm[rs, cs] = height
            self.image[:, rs, cs] = pixels[:, None, None] if np.ndim(pixels) == 1 else pixels
            return
        self.labels[rs, cs][mask] = label
        self.ndsm[rs, cs] = np.where(mask, height, self.ndsm[rs, cs])
        if np.ndim(pixels) == 1:
            pixels = pixels[:, None, None]
        self.image[:, rs, cs] = np.where(mask, pixels, self.image[:, rs, cs])


def generate_tile(tile_id: str, size: int = 512, seed: int = 0) -> SyntheticTile:
    """Generate one synthetic Potsdam-like tile.

    Args:
        tile_id: Tile id; ``"COL_ROW"`` ids (e.g. ``"2_10"``) are placed on a 300 m grid like the
            real Potsdam tiles, other ids at a pseudo-random grid cell derived from the id.
        size: Tile side in pixels (at least 32).
        seed: Non-negative seed; the tile is a deterministic function of
            ``(tile_id, seed, size)``.

    Returns:
        The tile: image, DSM, normalised DSM, labels and georeferencing.

    Raises:
        ValueError: If ``size`` is below 32 or ``seed`` is negative.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    rng = np.random.default_rng([zlib.crc32(tile_id.encode()), seed])
    canvas = _new_canvas(rng, size)
    streets = _plan_streets(rng, canvas)
    _paint_streets(rng, canvas, streets)
    for block in _blocks(canvas, streets):
        _paint_block(rng, canvas, block)
    for street in streets:
        _paint_street_cars(rng, canvas, street)
        _paint_street_trees(rng, canvas, street)
    _apply_shadows(canvas)
    rgbir = _apply_sensor(rng, canvas.image)
    terrain = _terrain(rng, size, canvas.unit)
    ndsm = canvas.ndsm
    return SyntheticTile(
        tile_id=tile_id,
        rgbir=rgbir,
        dsm=terrain + ndsm,
        ndsm=ndsm,
        labels=canvas.labels,
        transform=tile_transform(tile_id, size),
        crs=CRS,
    )


def tile_transform(tile_id: str, size: int) -> affine.Affine:
    """Return the north-up 5 cm transform of a tile.

    ``"COL_ROW"`` ids map to grid cell (COL, ROW) east and south of :data:`GRID_ORIGIN`; other ids
    to a cell derived from their CRC-32, north of that grid. The grid step is
    :data:`TILE_EXTENT`, or more for tiles larger than 6000 pixels, so tiles of the same size with
    different ids do not overlap (hashed ids collide with a probability of about 1e-6).

    Args:
        tile_id: Tile id.
        size: Tile side in pixels.

    Returns:
        The affine transform from pixel to map coordinates.
    """
    step = TILE_EXTENT * max(1, int(np.ceil(size * GSD / TILE_EXTENT)))
    match = _TILE_ID.match(tile_id)
    if match:
        col, row = int(match[1]), int(match[2])
    else:
        crc = zlib.crc32(tile_id.encode())
        col, row = crc % 1000, -1 - (crc // 1000) % 1000
    x0, y0 = GRID_ORIGIN
    return affine.Affine(GSD, 0.0, x0 + col * step, 0.0, -GSD, y0 - row * step)


def _new_canvas(rng: np.random.Generator, size: int) -> _Canvas:
    """Create the working arrays and texture fields of a tile."""
    unit = max(1.0 / GSD * min(1.0, size / FULL_SCALE_SIZE), 1.0)
    grain_cell = max(1.5, 0.4 * unit)
    grain = 0.8 * _value_noise(rng, size, grain_cell) + 0.6 * _value_noise(
        rng, size, 3 * grain_cell
    )
    return _Canvas(
        labels=np.full((size, size), LOW_VEGETATION, dtype=np.uint8),
        ndsm=np.zeros((size, size), dtype=np.float32),
        image=np.zeros((4, size, size), dtype=np.float32),
        zone=np.full((size, size), _BLOCK, dtype=np.uint8),
        grain=grain,
        patches=_value_noise(rng, size, 4.0 * unit),
        unit=unit,
    )


def _value_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Return smooth random noise with unit standard deviation.

    Args:
        rng: Random generator.
        size: Side of the square output in pixels.
        cell: Feature size (grid spacing of the random values) in pixels.

    Returns:
        Float32 (size, size) array, smoothstep interpolation of Gaussian values on a grid,
        rescaled by the mean standard deviation of that interpolation (0.7429).
    """
    n = int(np.ceil(size / cell)) + 2
    grid = rng.standard_normal((n, n), dtype=np.float32)

    def axis(offset: float) -> tuple[np.ndarray, np.ndarray]:
        pos = np.arange(size, dtype=np.float32) / np.float32(cell) + np.float32(offset)
        i = pos.astype(np.intp)
        t = pos - i
        return i, t * t * (3 - 2 * t)

    iy, ty = axis(rng.uniform(0, 1))
    ix, tx = axis(rng.uniform(0, 1))
    rows = grid[iy] * (1 - ty)[:, None] + grid[iy + 1] * ty[:, None]
    out = rows[:, ix] * (1 - tx)
    out += rows[:, ix + 1] * tx
    out *= np.float32(1.0 / 0.7429)
    return out


def _terrain(rng: np.random.Generator, size: int, unit: float) -> np.ndarray:
    """Return a gently rolling terrain between 30 and 40 m (H, W), hills 150 scene metres apart."""
    base = rng.uniform(32.0, 38.0)
    hills = _value_noise(rng, size, 150.0 * unit)
    return np.clip(base + 1.5 * hills, 30.0, 40.0).astype(np.float32)


def _plan_streets(rng: np.random.Generator, canvas: _Canvas) -> list[_Street]:
    """Lay out a jittered grid of streets, including one beyond each tile edge."""
    extent = canvas.size / canvas.unit
    streets = []
    for vertical in (False, True):
        pos = rng.uniform(-90.0, 0.0) - 10.0
        while pos < extent + 100.0:
            road, walk = rng.uniform(3.5, 6.0), rng.uniform(2.0, 3.5)
            streets.append(_Street(vertical, canvas.px(pos), canvas.px(road), canvas.px(walk)))
            pos += 2 * (road + walk) + rng.uniform(45.0, 85.0)
    return streets


def _paint_streets(rng: np.random.Generator, canvas: _Canvas, streets: list[_Street]) -> None:
    """Paint sidewalks, carriageways with lane markings, and clean intersections.

    Args:
        rng: Random generator.
        canvas: Canvas to paint on.
        streets: Street layout.
    """
    size = canvas.size
    asphalt = {}
    for street in streets:
        if box := street.band(street.half_width, size).clip(size):
            canvas.paint(
                box, IMPERVIOUS, _pavement_colour(rng), 0.0, shade=_grain(canvas, box, 0.05)
            )
            canvas.zone[box.slices] = _SIDEWALK
    for street in streets:
        grey = rng.uniform(80.0, 125.0)
        asphalt[street] = np.array([grey, grey, grey * 1.02, grey * 0.95], dtype=np.float32)
        if box := street.band(street.half_road, size).clip(size):
            canvas.paint(box, IMPERVIOUS, asphalt[street], 0.0, shade=_grain(canvas, box, 0.06))
            canvas.zone[box.slices] = _ROAD
    for street in streets:
        _paint_lane_markings(rng, canvas, street)
    for h in (s for s in streets if not s.vertical):
        for v in (s for s in streets if s.vertical):
            box = _Box(
                round(h.centre - h.half_road),
                round(v.centre - v.half_road),
                round(h.centre + h.half_road),
                round(v.centre + v.half_road),
            ).clip(size)
            if box:
                canvas.paint(box, IMPERVIOUS, asphalt[h], 0.0, shade=_grain(canvas, box, 0.06))


def _paint_lane_markings(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    """Paint a dashed centre line and solid edge lines along a street."""
    size, line = canvas.size, max(canvas.px(0.15), 0.6)
    white = np.array([215, 215, 210, 200], dtype=np.float32)
    along = np.arange(size) / canvas.unit + rng.uniform(0, 9)
    dashes = (along % 9.0) < 3.0
    for offset, pattern in (
        (0.0, dashes),
        (street.half_road - canvas.px(0.5), None),
        (-street.half_road + canvas.px(0.5), None),
    ):
        centre = street.centre + offset
        lo = round(centre - line / 2)
        hi = max(round(centre + line / 2), lo + 1)
        box = (_Box(0, lo, size, hi) if street.vertical else _Box(lo, 0, hi, size)).clip(size)
        if box is None:
            continue
        mask = None
        if pattern is not None:
            mask = pattern[:, None] if street.vertical else pattern[None, :]
            mask = np.broadcast_to(mask, (box.r1 - box.r0, box.c1 - box.c0))
        canvas.paint(box, IMPERVIOUS, white, 0.0, mask=mask)


def _blocks(canvas: _Canvas, streets: list[_Street]) -> Iterator[_Box]:
    """Yield the blocks between streets that touch the tile, unclipped."""
    for rows in _gaps([s for s in streets if not s.vertical]):
        for cols in _gaps([s for s in streets if s.vertical]):
            box = _Box(rows[0], cols[0], rows[1], cols[1])
            if box.clip(canvas.size):
                yield box


def _gaps(streets: list[_Street]) -> Iterator[tuple[int, int]]:
    """Yield the pixel intervals between consecutive parallel streets."""
    for a, b in pairwise(streets):
        yield round(a.centre + a.half_width), round(b.centre - b.half_width)


def _paint_block(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> None:
    """Fill a block with grass, paved yards, buildings, clutter and trees.

    Args:
        rng: Random generator.
        canvas: Canvas to paint on.
        block: The block, unclipped.
    """
    _paint_low_vegetation(rng, canvas, block)
    area = (block.r1 - block.r0) * (block.c1 - block.c0) / canvas.unit**2
    yards = [_paint_paved_yard(rng, canvas, block) for _ in range(rng.poisson(area / 2500.0 + 0.5))]
    for house in _building_plots(rng, canvas, block):
        _paint_building(rng, canvas, house)
    for yard in yards:
        if rng.random() < 0.6:
            _paint_parking(rng, canvas, yard)
    for _ in range(rng.poisson(area / 700.0)):
        _paint_soil(rng, canvas, block)
    for _ in range(rng.poisson(area / 250.0)):
        _paint_clutter_object(rng, canvas, block)
    for _ in range(rng.poisson(area / 170.0)):
        cy = rng.uniform(block.r0, block.r1)
        cx = rng.uniform(block.c0, block.c1)
        inside = 0 <= cy < canvas.size and 0 <= cx < canvas.size
        if inside and canvas.labels[int(cy), int(cx)] == LOW_VEGETATION:
            _paint_tree(rng, canvas, cy, cx)


def _paint_low_vegetation(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> None:
    """Cover a block with grass: tree-like greens, patchy, heights 0-0.5 m."""
    box = block.clip(canvas.size)
    if box is None:
        return
    rs, cs = box.slices
    green = np.array(
        [rng.uniform(65, 100), rng.uniform(90, 125), rng.uniform(45, 70), rng.uniform(150, 195)],
        dtype=np.float32,
    )
    patches = canvas.patches[rs, cs]
    dry = np.clip(patches - 0.8, 0.0, None) * rng.uniform(0.0, 0.5)
    colour = np.multiply.outer(green, 1.0 + 0.08 * patches + 0.02 * canvas.grain[rs, cs])
    colour[0] *= 1.0 + 0.6 * dry
    colour[3] *= 1.0 - 0.4 * dry
    height = np.clip(0.2 + 0.12 * patches + 0.02 * canvas.grain[rs, cs], 0.0, 0.5)
    canvas.labels[rs, cs] = LOW_VEGETATION
    canvas.ndsm[rs, cs] = height
    canvas.image[:, rs, cs] = colour
    canvas.zone[rs, cs] = _BLOCK


def _paint_paved_yard(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> _Box:
    """Pave a rectangle of a block (courtyard or parking lot) and return it, unclipped."""
    h, w = canvas.px(rng.uniform(8, 22)), canvas.px(rng.uniform(8, 28))
    cy = rng.uniform(block.r0 + h / 2, max(block.r1 - h / 2, block.r0 + h / 2 + 1))
    cx = rng.uniform(block.c0 + w / 2, max(block.c1 - w / 2, block.c0 + w / 2 + 1))
    yard = _Box.around(cy, cx, h / 2, w / 2)
    if box := yard.clip(canvas.size):
        colour = _pavement_colour(rng) if rng.random() < 0.5 else _asphalt_colour(rng)
        canvas.paint(box, IMPERVIOUS, colour, 0.0, shade=_grain(canvas, box, 0.05))
    return yard


def _paint_parking(rng: np.random.Generator, canvas: _Canvas, yard: _Box) -> None:
    """Park rows of cars, all facing the same way, in a paved yard."""
    vertical = rng.random() < 0.5
    length, width = canvas.px(4.6), canvas.px(2.6)
    half_r, half_c = (length / 2, width / 2) if vertical else (width / 2, length / 2)
    step_r, step_c = (3 * half_r, 2 * half_c) if vertical else (2 * half_r, 3 * half_c)
    for cy in np.arange(yard.r0 + 1.2 * half_r, yard.r1 - half_r, max(step_r, 1.0)):
        for cx in np.arange(yard.c0 + 1.2 * half_c, yard.c1 - half_c, max(step_c, 1.0)):
            if rng.random() < 0.6:
                _paint_car(rng, canvas, cy, cx, vertical=vertical)


def _building_plots(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> Iterator[_Box]:
    """Yield building footprints' bounding boxes along the four edges of a block.

    Along each edge, plots of 9-24 m frontage and 9-18 m depth follow each other with gaps of
    2-12 m and set back 1.5-6 m from the edge; plots that leave the block are skipped.

    Args:
        rng: Random generator.
        canvas: Canvas whose scale is used.
        block: The block, unclipped.
    """
    for side in range(4):
        vertical = side >= 2
        start, end = (block.r0, block.r1) if vertical else (block.c0, block.c1)
        pos = start + canvas.px(rng.uniform(1.0, 8.0))
        while pos < end:
            front, depth = canvas.px(rng.uniform(9, 24)), canvas.px(rng.uniform(9, 18))
            setback = canvas.px(rng.uniform(1.5, 6.0))
            edge = (block.r0, block.r1, block.c0, block.c1)[side]
            near = edge + setback if side % 2 == 0 else edge - setback - depth
            plot = (
                _Box(round(pos), round(near), round(pos + front), round(near + depth))
                if vertical
                else _Box(round(near), round(pos), round(near + depth), round(pos + front))
            )
            inside = plot.r0 >= block.r0 and plot.c0 >= block.c0
            if inside and plot.r1 <= block.r1 and plot.c1 <= block.c1:
                yield plot
            pos += front + canvas.px(rng.uniform(2.0, 12.0))
    for _ in range(6):
        h, w = canvas.px(rng.uniform(9, 24)), canvas.px(rng.uniform(9, 24))
        r0 = rng.uniform(block.r0, block.r1 - h)
        c0 = rng.uniform(block.c0, block.c1 - w)
        yield _Box(round(r0), round(c0), round(r0 + h), round(c0 + w))


def _paint_building(rng: np.random.Generator, canvas: _Canvas, house: _Box) -> None:
    """Paint a building on a plot unless the plot is within 2 m of another building.

    The footprint is the plot rectangle or an L shape cut from it. Gabled rectangles get a ridge
    along the long side with a sunlit and a shaded roof plane; other roofs are flat with a
    parapet and rooftop units.

    Args:
        rng: Random generator.
        canvas: Canvas to paint on.
        house: Bounding box of the footprint, unclipped.
    """
    box = house.clip(canvas.size)
    check = house.grow(round(canvas.px(2.0))).clip(canvas.size)
    if box is None or (canvas.labels[check.slices] == BUILDING).any():
        return
    yy, xx = _grid(box, house)
    mask = np.ones(yy.shape, dtype=bool)
    if rng.random() < 0.4:
        cut_y, cut_x = rng.uniform(0.35, 0.65, size=2)
        flip_y, flip_x = rng.random(2) < 0.5
        in_y = (yy > cut_y) if flip_y else (yy < cut_y)
        in_x = (xx > cut_x) if flip_x else (xx < cut_x)
        mask &= ~(in_y & in_x)
        gabled = False
    else:
        gabled = rng.random() < 0.65
    colour = _roof_colour(rng, red=gabled and rng.random() < 0.75)
    if gabled:
        along_x = house.c1 - house.c0 >= house.r1 - house.r0
        height, shade = _gable_roof(rng, yy, xx, along_x=along_x)
    else:
        height, shade = _flat_roof(rng, canvas, box, house)
    shade = shade * (1.0 + 0.05 * canvas.grain[box.slices])
    canvas.paint(box, BUILDING, colour, height, mask=mask, shade=shade)


def _grid(box: _Box, whole: _Box) -> tuple[np.ndarray, np.ndarray]:
    """Return pixel-centre coordinates of ``box`` relative to ``whole``, scaled to 0-1."""
    yy = (np.arange(box.r0, box.r1, dtype=np.float32) + 0.5 - whole.r0) / (whole.r1 - whole.r0)
    xx = (np.arange(box.c0, box.c1, dtype=np.float32) + 0.5 - whole.c0) / (whole.c1 - whole.c0)
    return np.broadcast_arrays(yy[:, None], xx[None, :])


def _gable_roof(
    rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray, along_x: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Return height and shading of a gabled roof, ridge along x or y, sun from the south-west."""
    eave = rng.uniform(6.0, 14.0)
    rise = rng.uniform(2.0, min(6.0, 20.0 - eave))
    across = yy if along_x else xx
    height = eave + rise * (1.0 - np.abs(2.0 * across - 1.0))
    sunlit = across > 0.5 if along_x else across < 0.5
    shade = np.where(sunlit, 1.08, 0.78).astype(np.float32)
    return height.astype(np.float32), shade


def _flat_roof(
    rng: np.random.Generator, canvas: _Canvas, box: _Box, house: _Box
) -> tuple[np.ndarray, np.ndarray]:
    """Return height and shading of a flat roof with a parapet and small rooftop units."""
    top = rng.uniform(6.0, 18.5)
    rows = np.arange(box.r0, box.r1)[:, None]
    cols = np.arange(box.c0, box.c1)[None, :]
    edge = np.minimum(
        np.minimum(rows - house.r0, house.r1 - 1 - rows),
        np.minimum(cols - house.c0, house.c1 - 1 - cols),
    )
    parapet = edge < max(canvas.px(0.4), 1.0)
    height = np.where(parapet, top + 0.5, top).astype(np.float32)
    shade = np.where(parapet, 1.12, 1.0).astype(np.float32)
    for _ in range(rng.integers(0, 4)):
        s = canvas.px(rng.uniform(1.0, 2.5))
        r = rng.uniform(house.r0 + s, max(house.r1 - s, house.r0 + s + 1))
        c = rng.uniform(house.c0 + s, max(house.c1 - s, house.c0 + s + 1))
        unit = (np.abs(rows - r) < s / 2) & (np.abs(cols - c) < s / 2)
        height = np.where(unit, top + 1.2, height)
        shade = np.where(unit, 1.25, shade)
    return height, shade


def _paint_tree(rng: np.random.Generator, canvas: _Canvas, cy: float, cx: float) -> None:
    """Paint a round, lobed tree crown 5-20 m high with a textured canopy.

    The crown is drawn only where it rises above what is already there, so it can overhang
    grass, pavement, cars and low roofs.

    Args:
        rng: Random generator.
        canvas: Canvas to paint on.
        cy: Crown centre row in pixels.
        cx: Crown centre column in pixels.
    """
    top = rng.uniform(5.0, 20.0)
    radius = canvas.px(rng.uniform(1.5, 2.5) + 0.15 * top)
    crown = _Box.around(cy, cx, radius * 1.2, radius * 1.2)
    box = crown.clip(canvas.size)
    if box is None:
        return
    dy = (np.arange(box.r0, box.r1, dtype=np.float32) + 0.5 - cy)[:, None] / radius
    dx = (np.arange(box.c0, box.c1, dtype=np.float32) + 0.5 - cx)[None, :] / radius
    angle = np.arctan2(dy, dx)
    lobes = 1.0 + 0.06 * np.sin(rng.integers(5, 10) * angle + rng.uniform(0, 2 * np.pi))
    grain = canvas.grain[box.slices]
    r = np.sqrt(dy * dy + dx * dx) / (lobes + 0.05 * grain)
    dome = np.sqrt(np.clip(1.0 - r * r, 0.0, 1.0))
    height = np.minimum(top * (0.55 + 0.45 * dome) * (1.0 + 0.06 * grain), top)
    mask = (r < 1.0) & (height > canvas.ndsm[box.slices])
    green = np.array(
        [rng.uniform(55, 95), rng.uniform(80, 120), rng.uniform(40, 65), rng.uniform(145, 200)],
        dtype=np.float32,
    )
    shade = 0.75 + 0.3 * dome + 0.2 * grain + 0.15 * (dy - dx) / np.sqrt(2.0)
    canvas.paint(box, TREE, green, height, mask=mask, shade=np.clip(shade, 0.4, 1.5))


def _paint_soil(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> None:
    """Paint an elliptic bare soil patch (clutter) on grass."""
    a, b = canvas.px(rng.uniform(1.5, 5.0)), canvas.px(rng.uniform(1.5, 5.0))
    cy, cx = rng.uniform(block.r0, block.r1), rng.uniform(block.c0, block.c1)
    patch = _Box.around(cy, cx, a, b)
    box = patch.clip(canvas.size)
    if box is None:
        return
    yy, xx = _grid(box, patch)
    wobble = 0.15 * canvas.patches[box.slices]
    mask = ((2 * yy - 1) ** 2 + (2 * xx - 1) ** 2 < 1.0 + wobble) & (
        canvas.labels[box.slices] == LOW_VEGETATION
    )
    soil = np.array(
        [rng.uniform(115, 150), rng.uniform(90, 115), rng.uniform(65, 85), rng.uniform(105, 135)],
        dtype=np.float32,
    )
    shade = 1.0 + 0.1 * canvas.grain[box.slices]
    canvas.paint(box, CLUTTER, soil, 0.05, mask=mask, shade=shade)


def _paint_clutter_object(rng: np.random.Generator, canvas: _Canvas, block: _Box) -> None:
    """Paint a small object (container, shed, pile) of random colour, 0.3-2.5 m high."""
    a, b = canvas.px(rng.uniform(0.6, 2.5)), canvas.px(rng.uniform(0.6, 2.5))
    cy, cx = rng.uniform(block.r0, block.r1), rng.uniform(block.c0, block.c1)
    box = _Box.around(cy, cx, a, b).clip(canvas.size)
    if box is None:
        return
    mask = np.isin(canvas.labels[box.slices], (IMPERVIOUS, LOW_VEGETATION))
    colour = rng.uniform(30, 230, size=4).astype(np.float32)
    colour[3] = rng.uniform(0.6, 1.0) * colour[:3].mean()
    shade = 1.0 + 0.08 * canvas.grain[box.slices]
    canvas.paint(box, CLUTTER, colour, rng.uniform(0.3, 2.5), mask=mask, shade=shade)


def _paint_street_cars(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    """Put cars in both lanes of a street, skipping spots that are taken or off the road."""
    for lane in (-0.5, 0.5):
        centre = street.centre + lane * street.half_road
        pos = rng.uniform(-10, 20)
        while pos < canvas.size / canvas.unit:
            pos += 2.5
            if 0 <= centre < canvas.size and rng.random() < 0.55:
                along = canvas.px(pos)
                cy, cx = (along, centre) if street.vertical else (centre, along)
                _paint_car(rng, canvas, cy, cx, vertical=street.vertical, road=True)
            pos += rng.uniform(3.0, 16.0)


def _paint_car(
    rng: np.random.Generator,
    canvas: _Canvas,
    cy: float,
    cx: float,
    vertical: bool,
    road: bool = False,
) -> None:
    """Paint a car of about 4.5 x 1.8 m and 1.5 m height, with dark windows.

    Args:
        rng: Random generator.
        canvas: Canvas to paint on.
        cy: Centre row in pixels.
        cx: Centre column in pixels.
        vertical: True if the car points north-south.
        road: Only paint if the whole footprint is free carriageway.
    """
    length, width = canvas.px(rng.uniform(4.0, 5.0)), canvas.px(rng.uniform(1.7, 1.9))
    half_h, half_w = (length / 2, width / 2) if vertical else (width / 2, length / 2)
    car = _Box.around(cy, cx, half_h, half_w)
    box = car.clip(canvas.size)
    if box is None:
        return
    rs, cs = box.slices
    if road and (
        (canvas.zone[rs, cs] != _ROAD).any() or (canvas.labels[rs, cs] != IMPERVIOUS).any()
    ):
        return
    if not road and (canvas.labels[rs, cs] != IMPERVIOUS).any():
        return
    yy, xx = _grid(box, car)
    along = yy if vertical else xx
    if rng.random() < 0.5:
        along = 1.0 - along
    cabin = (along > 0.3) & (along < 0.85)
    window = ((along > 0.3) & (along < 0.42)) | ((along > 0.75) & (along < 0.85))
    colour = _CAR_COLOURS[rng.integers(len(_CAR_COLOURS))] * rng.uniform(0.85, 1.1)
    shade = np.where(window, 0.35, 1.0).astype(np.float32) * (1.0 + 0.04 * canvas.grain[rs, cs])
    height = np.where(cabin, rng.uniform(1.35, 1.6), 0.9).astype(np.float32)
    canvas.paint(box, CAR, colour, height, shade=shade)


def _paint_street_trees(rng: np.random.Generator, canvas: _Canvas, street: _Street) -> None:
    """Plant a row of trees along the sidewalks of some streets."""
    if rng.random() < 0.5:
        return
    for side in (-1.0, 1.0):
        centre = street.centre + side * (street.half_road + 0.5 * street.sidewalk)
        pos = rng.uniform(0, 10)
        while pos < canvas.size / canvas.unit:
            along = canvas.px(pos)
            cy, cx = (along, centre) if street.vertical else (centre, along)
            if 0 <= cy < canvas.size and 0 <= cx < canvas.size:
                _paint_tree(rng, canvas, cy, cx)
            pos += rng.uniform(9.0, 16.0)


def _apply_shadows(canvas: _Canvas) -> None:
    """Darken pixels in the cast shadow of taller objects, sun from the south-west.

    A pixel is in shadow if some pixel ``j`` diagonal steps to its south-west is higher than it
    by more than ``j`` times the drop per step. The maximum over all ``j`` is computed with
    ``log2`` shifted maxima (max-plus doubling), so the cost does not grow with shadow length.

    Args:
        canvas: Canvas whose image is darkened in place.
    """
    ndsm, size = canvas.ndsm, canvas.size
    drop = np.float32(np.sqrt(2.0) / (0.5 * canvas.unit))
    reach = float(ndsm.max()) / drop
    horizon = ndsm.copy()
    shifted = np.empty_like(horizon)
    shift = 1
    while shift <= reach and shift < size:
        shifted.fill(-np.inf)
        np.subtract(
            horizon[shift:, : size - shift], shift * drop, out=shifted[: size - shift, shift:]
        )
        np.maximum(horizon, shifted, out=horizon)
        shift *= 2
    shadow = horizon > ndsm + 0.5
    factor = np.where(shadow, np.float32(0.55), np.float32(1.0))
    canvas.image *= factor[None]


def _apply_sensor(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Apply a tile-wide gain and Gaussian sensor noise, and quantise to uint8 (4, H, W)."""
    gain = rng.uniform(0.9, 1.1, size=4).astype(np.float32)
    out = np.empty(image.shape, dtype=np.uint8)
    for band in range(image.shape[0]):
        noisy = image[band] * gain[band]
        noisy += rng.standard_normal(image.shape[1:], dtype=np.float32) * np.float32(4.0)
        np.clip(noisy, 0, 255, out=noisy)
        out[band] = noisy
    return out


def _grain(canvas: _Canvas, box: _Box, strength: float) -> np.ndarray:
    """Return a brightness factor ``1 + strength * grain`` for a box."""
    return 1.0 + np.float32(strength) * canvas.grain[box.slices]


def _pavement_colour(rng: np.random.Generator) -> np.ndarray:
    """Return a sidewalk colour: light grey or red paving, overlapping the roof colours."""
    if rng.random() < 0.35:
        r = rng.uniform(130, 175)
        return np.array([r, r * 0.72, r * 0.62, r * 0.8], dtype=np.float32)
    g = rng.uniform(120, 175)
    return np.array([g, g, g * 0.98, g * 0.92], dtype=np.float32)


def _asphalt_colour(rng: np.random.Generator) -> np.ndarray:
    """Return a dark grey asphalt colour."""
    g = rng.uniform(80, 125)
    return np.array([g, g, g * 1.02, g * 0.95], dtype=np.float32)


def _roof_colour(rng: np.random.Generator, red: bool) -> np.ndarray:
    """Return a roof colour: red tiles, or greys that overlap asphalt and pavement."""
    if red:
        r = rng.uniform(130, 185)
        g = r * rng.uniform(0.42, 0.6)
        return np.array([r, g, g * rng.uniform(0.75, 0.95), r * rng.uniform(0.7, 0.9)], np.float32)
    g = rng.uniform(80, 175)
    return np.array([g, g, g * rng.uniform(0.97, 1.08), g * rng.uniform(0.85, 1.0)], np.float32)
