"""Spatial train/val/test splits: square blocks of the ground, separated by a buffer.

Neighbouring pixels look alike, so validating on random patches of the image a
model was trained on measures how well it remembers, not how well it maps. A
spatial split instead lays a grid of square blocks (a few patches on a side) over
the dataset, assigns each block with labelled pixels at random to ``train``,
``val`` or ``test`` (reproducibly, from a seed), and keeps a buffer of at least
one patch between the sets: every ``val`` block is shrunk away from its ``train``
neighbours, and every ``test`` block away from its ``train`` and ``val``
neighbours (edges and corners), so that no validation or test patch comes closer
than the buffer to a training patch. The resulting regions are stored in
``dataset.json`` and the datamodule samples each split's patches inside its own
regions only.

This is TorchGeo's :func:`~torchgeo.datasets.random_grid_cell_assignment` with
blocks of a fixed ground size (instead of a fixed number per file), on the
pixel grid, and with a buffer.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from affine import Affine

#: Names of the splits, in the order in which they are kept apart: a block of a
#: later split is shrunk away from blocks of every earlier one.
SPLITS = ("train", "val", "test")

#: Default shares of the labelled blocks that go to train, val and test.
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)

#: Default side of a block, in patches.
DEFAULT_BLOCK_PATCHES = 8

#: The default block side shrinks (down to :data:`MIN_BLOCK_PATCHES`) until a dataset
#: holds at least this many blocks.
MIN_DEFAULT_BLOCKS = 16

#: Smallest default block side, in patches: a block shrunk by a one-patch buffer on
#: two opposite sides still holds a patch.
MIN_BLOCK_PATCHES = 3

#: Default training patch side in pixels that a split keeps apart (that of the
#: configurations in ``configs/``).
DEFAULT_PATCH_SIZE = 512

#: ``(minx, miny, maxx, maxy)`` in CRS units.
Box = tuple[float, float, float, float]

#: Tolerance of coordinate comparisons, in CRS units.
_EPS = 1e-9

#: Decimals kept of block and region coordinates (dropping floating-point noise).
_DIGITS = 9


@dataclass(frozen=True)
class BlockGrid:
    """Square blocks covering an area, with edges on a raster's pixel grid.

    Attributes:
        x_edges: Column edges, west to east, in CRS units.
        y_edges: Row edges, north to south, in CRS units.
    """

    x_edges: tuple[float, ...]
    y_edges: tuple[float, ...]

    @classmethod
    def over(cls, bounds: Box, res: tuple[float, float], block_px: int) -> "BlockGrid":
        """Cover *bounds* with blocks of at least *block_px* pixels, all of nearly equal size.

        Args:
            bounds: Area to cover, with edges on the pixel grid.
            res: Pixel size ``(x, y)`` in CRS units.
            block_px: Smallest block side in pixels (unless the area is smaller).

        Returns:
            The grid; the number of blocks along an axis is the extent divided by
            *block_px*, rounded down (at least 1), and block edges fall on whole pixels.
        """
        minx, miny, maxx, maxy = bounds
        width, height = round((maxx - minx) / res[0]), round((maxy - miny) / res[1])
        return cls(
            x_edges=tuple(round(minx + px * res[0], _DIGITS) for px in _edges(width, block_px)),
            y_edges=tuple(round(maxy - px * res[1], _DIGITS) for px in _edges(height, block_px)),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """Number of block rows and columns."""
        return len(self.y_edges) - 1, len(self.x_edges) - 1

    @property
    def mean_side(self) -> float:
        """Mean block side, in CRS units."""
        width = (self.x_edges[-1] - self.x_edges[0]) / self.shape[1]
        height = (self.y_edges[0] - self.y_edges[-1]) / self.shape[0]
        return (width + height) / 2

    @property
    def boxes(self) -> list[Box]:
        """The blocks, row by row from the north-west corner."""
        return [
            (self.x_edges[c], self.y_edges[r + 1], self.x_edges[c + 1], self.y_edges[r])
            for r in range(self.shape[0])
            for c in range(self.shape[1])
        ]

    def count(self, transform: Affine, mask: np.ndarray) -> np.ndarray:
        """Count the true pixels of a north-up raster mask in each block, by pixel centre.

        Args:
            transform: Pixel-to-CRS transform of *mask*.
            mask: Boolean ``(H, W)`` raster, e.g. the labelled pixels of a tile.

        Returns:
            int64 counts, one per block of :attr:`boxes`.
        """
        rows, cols = self.shape
        x = transform.c + (np.arange(mask.shape[1]) + 0.5) * transform.a
        y = transform.f + (np.arange(mask.shape[0]) + 0.5) * transform.e
        col = np.searchsorted(np.asarray(self.x_edges), x, side="right") - 1
        row = np.searchsorted(-np.asarray(self.y_edges), -y, side="right") - 1
        counts = np.zeros((rows, cols), dtype=np.int64)
        inside = (col >= 0) & (col < cols)
        for r in range(rows):
            hits = np.flatnonzero(row == r)
            if hits.size:
                per_col = mask[hits[0] : hits[-1] + 1].sum(axis=0)
                counts[r] = np.bincount(col[inside], weights=per_col[inside], minlength=cols)
        return counts.ravel()


def _edges(extent_px: int, block_px: int) -> list[int]:
    n = max(1, extent_px // block_px)
    return [round(i * extent_px / n) for i in range(n + 1)]


def default_block_px(width_px: int, height_px: int, patch_px: int) -> int:
    """The default block side: :data:`DEFAULT_BLOCK_PATCHES` patches, fewer for small areas.

    Args:
        width_px: Width of the area to split, in pixels.
        height_px: Its height, in pixels.
        patch_px: Training patch side, in pixels.

    Returns:
        In pixels, the largest whole number of patches from
        :data:`DEFAULT_BLOCK_PATCHES` down to :data:`MIN_BLOCK_PATCHES` that gives at
        least :data:`MIN_DEFAULT_BLOCKS` blocks; failing that, the largest (down to
        2 patches) that gives 2 x 2 blocks, in which every block is a corner that
        keeps a patch whichever neighbours it is kept apart from.
    """

    def count(patches: int) -> tuple[int, int]:
        block = patches * patch_px
        return max(1, width_px // block), max(1, height_px // block)

    for patches in range(DEFAULT_BLOCK_PATCHES, MIN_BLOCK_PATCHES - 1, -1):
        cols, rows = count(patches)
        if cols * rows >= MIN_DEFAULT_BLOCKS:
            return patches * patch_px
    for patches in range(DEFAULT_BLOCK_PATCHES, 1, -1):
        if min(count(patches)) >= 2:
            return patches * patch_px
    return 2 * patch_px


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Return *fractions* as a (train, val, test) triple.

    Raises:
        ValueError: Unless there are three non-negative shares summing to 1, with a
            positive share for train and for val.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions):
        raise ValueError(f"need 3 non-negative split fractions (train, val, test), got {fractions}")
    if not math.isclose(sum(fractions), 1, abs_tol=1e-6):
        raise ValueError(f"split fractions must sum to 1, got {sum(fractions):g}")
    if fractions[0] <= 0 or fractions[1] <= 0:
        raise ValueError("the train and val fractions must be positive")
    train, val, test = (float(f) for f in fractions)
    return train, val, test


def assign_blocks(n: int, fractions: Sequence[float], seed: int) -> list[str]:
    """Assign *n* blocks at random to the splits.

    Every split with a positive fraction gets at least one block; val and test get
    ``round(fraction * n)`` blocks, train the rest.

    Args:
        n: Number of blocks.
        fractions: Shares of train, val and test (see :func:`check_fractions`).
        seed: Seed of the random permutation; the same seed gives the same split.

    Returns:
        The split of each block.

    Raises:
        ValueError: If there are fewer blocks than splits to fill.
    """
    fractions = check_fractions(fractions)
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n < len(wanted):
        raise ValueError(f"{n} block(s) with labels cannot be split {len(wanted)} ways")
    counts = [max(1, round(f * n)) if f > 0 else 0 for f in fractions]
    counts[0] = n - counts[1] - counts[2]
    while counts[0] < 1:
        largest = 1 if counts[1] >= counts[2] else 2
        counts[largest] -= 1
        counts[0] += 1
    order = np.random.default_rng(seed).permutation(n)
    names = np.repeat(np.array(SPLITS), counts)
    assigned = np.empty(n, dtype=object)
    assigned[order] = names
    return [str(s) for s in assigned]


def gap(a: Box, b: Box) -> float:
    """Chebyshev distance between two boxes: 0 if they touch or overlap.

    A box kept at this distance ``d`` from another cannot reach it even when
    widened by ``d`` on every side.
    """
    dx = max(a[0] - b[2], b[0] - a[2], 0.0)
    dy = max(a[1] - b[3], b[1] - a[3], 0.0)
    return max(dx, dy)


def _shrink(box: Box, other: Box, buffer: float) -> Box:
    """Cut *box* back so that it is *buffer* away from *other*, on the side facing it."""
    minx, miny, maxx, maxy = box
    if other[0] >= maxx - _EPS:
        maxx = min(maxx, other[0] - buffer)
    elif other[2] <= minx + _EPS:
        minx = max(minx, other[2] + buffer)
    elif other[1] >= maxy - _EPS:
        maxy = min(maxy, other[1] - buffer)
    else:
        miny = max(miny, other[3] + buffer)
    return minx, miny, maxx, maxy


def separate(blocks: Sequence[Box], assigned: Sequence[str | None], buffer: float) -> list[Box]:
    """Shrink blocks so that regions of different splits are at least *buffer* apart.

    A block of a later split (see :data:`SPLITS`) is cut back on each side that
    faces a block of an earlier split closer than *buffer*; a block touching one
    only at a corner is cut back on its east or west side. Training blocks are kept
    whole.

    Args:
        blocks: Non-overlapping blocks.
        assigned: Split of each block, or None for blocks in no split.
        buffer: Smallest Chebyshev distance (see :func:`gap`) between regions of
            different splits, in CRS units.

    Returns:
        The shrunk block of each input block (possibly empty: ``maxx <= minx``).
    """
    rank = {name: i for i, name in enumerate(SPLITS)}
    tree = shapely.STRtree([shapely.box(*b) for b in blocks])
    out = []
    for box, split in zip(blocks, assigned, strict=True):
        region = box
        near = tree.query(shapely.box(*box).buffer(buffer, cap_style="square", join_style="mitre"))
        for i in sorted(near.tolist()):
            other, other_split = blocks[i], assigned[i]
            if split is None or other_split is None or rank[other_split] >= rank[split]:
                continue
            if _nonempty(region) and gap(region, other) < buffer - _EPS:
                region = _shrink(region, other, buffer)
        out.append(region)
    return out


def _nonempty(box: Box, min_side: float = 0.0) -> bool:
    width, height = box[2] - box[0], box[3] - box[1]
    return width > 0 and height > 0 and min(width, height) >= min_side - _EPS


@dataclass
class SpatialSplit:
    """A spatial split of a dataset, as stored in ``dataset.json``.

    Attributes:
        block_size: Block side in metres on the ground.
        buffer: Smallest distance between regions of different splits, in metres.
        patch_size: Training patch side in pixels the split was made for; regions
            narrower than a patch were left out.
        seed: Seed of the random block assignment.
        fractions: Shares of the labelled blocks given to train, val and test.
        blocks: Number of blocks given to each split, and ``"unlabelled"`` blocks
            left out of every split because no label falls in them.
        regions: ``{split: [[minx, miny, maxx, maxy], ...]}`` in the tiles' CRS.
        made_by_default: Whether the recipe chose this split itself (not stored).
    """

    block_size: float
    buffer: float
    patch_size: int
    seed: int
    fractions: tuple[float, float, float]
    blocks: dict[str, int]
    regions: dict[str, list[Box]]
    made_by_default: bool = field(default=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON form (see :meth:`from_dict`)."""
        return {
            "block_size_m": self.block_size,
            "buffer_m": self.buffer,
            "patch_size": self.patch_size,
            "seed": self.seed,
            "fractions": list(self.fractions),
            "blocks": dict(self.blocks),
            "regions": {k: [list(b) for b in v] for k, v in self.regions.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SpatialSplit":
        """Inverse of :meth:`to_dict`."""
        train, val, test = (float(f) for f in d["fractions"])
        return cls(
            block_size=float(d["block_size_m"]),
            buffer=float(d["buffer_m"]),
            patch_size=int(d["patch_size"]),
            seed=int(d["seed"]),
            fractions=(train, val, test),
            blocks={k: int(v) for k, v in d["blocks"].items()},
            regions={
                k: [(float(a), float(b), float(c), float(e)) for a, b, c, e in v]
                for k, v in d["regions"].items()
            },
        )

    def boxes(self, split: str, min_side: float = 0.0) -> list[Box]:
        """Regions of *split* whose sides are at least *min_side* CRS units."""
        return [b for b in self.regions.get(split, []) if _nonempty(b, min_side)]

    def roi(self, split: str) -> shapely.Geometry:
        """Regions of *split* as one (multi)polygon, for a sampler's ``roi``."""
        return shapely.union_all([shapely.box(*b) for b in self.boxes(split)])

    def describe(self) -> str:
        """One line for the recipe's output."""
        counts = ", ".join(f"{self.blocks.get(s, 0)} {s}" for s in SPLITS)
        left_out = self.blocks.get("unlabelled", 0)
        unlabelled = f", {left_out} without labels left out" if left_out else ""
        return (
            f"blocks of {self.block_size:g} m ({counts}{unlabelled}), "
            f"{self.buffer:g} m buffer between the sets, seed {self.seed}"
        )


def make_spatial_split(
    grid: BlockGrid,
    labelled: np.ndarray,
    block_size: float,
    buffer: float,
    buffer_crs: float,
    patch_size: int,
    patch_crs: float,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> SpatialSplit:
    """Assign the labelled blocks of *grid* to the splits and keep the sets apart.

    Args:
        grid: Blocks covering the dataset.
        labelled: Labelled pixels per block (see :meth:`BlockGrid.count`); blocks
            without any are left out of every split.
        block_size: Block side in metres, recorded in the result.
        buffer: Buffer in metres, recorded in the result.
        buffer_crs: The buffer in CRS units.
        patch_size: Training patch side in pixels.
        patch_crs: The patch side in CRS units; shrunk val and test blocks narrower
            than this are dropped.
        fractions: Shares of train, val and test blocks.
        seed: Seed of the block assignment.

    Returns:
        The split, with each split's regions.

    Raises:
        ValueError: If there are too few labelled blocks, or the buffer leaves no
            validation (or, with a test fraction, test) region of a patch or more.
    """
    fractions = check_fractions(fractions)
    boxes = grid.boxes
    keep = np.flatnonzero(np.asarray(labelled) > 0)
    names = assign_blocks(len(keep), fractions, seed)
    assigned: list[str | None] = [None] * len(boxes)
    for i, name in zip(keep, names, strict=True):
        assigned[i] = name
    shrunk = separate(boxes, assigned, buffer_crs)
    regions: dict[str, list[Box]] = {s: [] for s in SPLITS}
    for box, name in zip(shrunk, assigned, strict=True):
        if name is not None and _nonempty(box, patch_crs):
            regions[name].append(tuple(round(float(v), _DIGITS) for v in box))  # type: ignore[arg-type]
    for name, share in zip(SPLITS, fractions, strict=True):
        if share > 0 and not regions[name]:
            raise ValueError(
                f"no {name} region of at least one patch ({patch_size} px) is left once "
                f"{name} blocks are kept {buffer:g} m from the others; use larger blocks "
                "or a smaller patch size"
            )
    blocks = {s: names.count(s) for s in SPLITS}
    blocks["unlabelled"] = len(boxes) - len(keep)
    return SpatialSplit(
        block_size=block_size,
        buffer=buffer,
        patch_size=patch_size,
        seed=seed,
        fractions=fractions,
        blocks=blocks,
        regions=regions,
    )
