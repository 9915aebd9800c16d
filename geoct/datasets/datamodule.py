"""Lightning datamodule over a prepared dataset (Potsdam, synthetic or user rasters)."""

import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import shapely
from torch.utils.data import DataLoader
from torchgeo.datamodules import GeoDataModule
from torchgeo.datasets import GeoDataset, IntersectionDataset

from ..compat import GriddedPatchSampler, RandomPatchSampler, Sample
from ..errors import ConfigError
from ..metadata import HEIGHT_BAND, ModelSpec
from .augment import normalize, train_augmentation
from .layout import DatasetInfo, read_dataset_json
from .potsdam import AlignedRasterDataset, HeightRaster, ImageRaster, LabelRaster, concat_images
from .splits import Box


class TileGriddedPatchSampler(GriddedPatchSampler):
    """A :class:`GriddedPatchSampler` that grids each tile separately, on its pixels.

    Every tile is covered completely; the last row and column of patches are moved
    inwards to end at the tile's edge, so patches never hang over a tile (unless the
    tile is smaller than a patch) and counts are exact in pixels, not subject to
    floating-point rounding of CRS coordinates. Given *regions* (the boxes of a
    spatial split), each part of a tile inside a region is gridded the same way.
    """

    def __init__(
        self,
        dataset: GeoDataset,
        *,
        size: int,
        stride: int | None = None,
        regions: Sequence[Box] | None = None,
    ) -> None:
        """Initialise a new TileGriddedPatchSampler.

        Args:
            dataset: Dataset to sample from; each row of its index is a tile.
            size: Patch side in pixels.
            stride: Distance between patches in pixels (defaults to *size*).
            regions: ``(minx, miny, maxx, maxy)`` boxes to grid within the tiles,
                instead of the whole tiles; their edges should be on the pixel grid.
        """
        super().__init__(dataset, size=size, stride=stride)
        self.size_px = int(size)
        self.stride_px = int(stride or size)
        boxes = {tuple(round(v, 6) for v in g.bounds) for g in dataset.index.geometry}
        if regions is not None:
            boxes = {
                tuple(round(v, 6) for v in part.bounds)
                for tile in boxes
                for region in regions
                if not (part := shapely.box(*tile) & shapely.box(*region)).is_empty
                and part.area > 0
            }
        self.tiles = sorted(boxes, key=lambda b: (-b[3], b[0]))
        self._length = sum(len(self._offsets(b, 0)) * len(self._offsets(b, 1)) for b in self.tiles)

    def _offsets(self, box: tuple[float, ...], axis: int) -> list[int]:
        res = self.res[axis]
        extent = round((box[axis + 2] - box[axis]) / res)
        n = max(math.ceil((extent - self.size_px) / self.stride_px), 0) + 1
        return [max(min(i * self.stride_px, extent - self.size_px), 0) for i in range(n)]

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        """Yield ``[xmin:xmax, ymin:ymax]`` windows tile by tile, rows from the top."""
        xres, yres = self.res
        for box in self.tiles:
            for row in self._offsets(box, 1):
                ymax = box[3] - row * yres
                for col in self._offsets(box, 0):
                    xmin = box[0] + col * xres
                    yield (
                        slice(xmin, xmin + self.size_px * xres),
                        slice(ymax - self.size_px * yres, ymax),
                    )


class PotsdamDataModule(GeoDataModule):
    """Training, validation and test patches of a prepared dataset.

    Batches hold ``image`` (float32 ``(B, C, H, W)``: the selected bands, then the
    height channel if any, normalised with the statistics in ``dataset.json``) and
    ``mask`` (int64 ``(B, H, W)``, ignore index for unlabelled pixels). Training
    draws random patches from the training tiles; validation and test cover their
    tiles with a grid of patches. When ``dataset.json`` holds a spatial split (see
    :mod:`geoct.datasets.splits`), each split's patches lie inside its own regions
    of the tiles, so none comes closer than the split's buffer to another split's.
    """

    def __init__(
        self,
        root: str | Path,
        bands: Sequence[str] = ("R", "G", "B", "IR"),
        height: str | None = None,
        batch_size: int = 8,
        patch_size: int = 256,
        length: int | None = None,
        num_workers: int = 0,
        val_tiles: Sequence[str] | None = None,
        augment: bool = True,
        seed: int | None = None,
    ) -> None:
        """Initialise a new PotsdamDataModule.

        Args:
            root: Folder of a prepared dataset (with ``dataset.json``).
            bands: Image bands in model input order, e.g. ``("IR", "R", "G")``.
            height: Height channel appended to the image: ``"dsm"``, ``"ndsm"`` or None.
            batch_size: Patches per batch.
            patch_size: Patch side in pixels.
            length: Training patches per epoch (default: about the tiles' area).
            num_workers: Data loading worker processes.
            val_tiles: Training tiles to validate on instead of the ``val`` split.
            augment: Flip, rotate and jitter training batches.
            seed: Seed of the training patch sampler's own random generator, so that
                runs draw the same patches whatever else consumes random numbers
                (default: fresh entropy; TorchGeo's sampler ignores ``seed_everything``).

        Raises:
            InputError: If ``dataset.json`` is missing or invalid.
            ConfigError: If a band, height product or validation tile is not available.
        """
        super().__init__(
            ImageRaster,
            batch_size=batch_size,
            patch_size=patch_size,
            length=length,
            num_workers=num_workers,
        )
        self.root = Path(root)
        self.info: DatasetInfo = read_dataset_json(self.root)
        self.bands = tuple(bands)
        self.height = height
        self.augment = augment
        self.seed = seed
        self.splits = self._splits(val_tiles)
        self._check_options()
        spec = self.model_spec
        self.aug = normalize(spec.mean, spec.std)
        if augment:
            self.train_aug = train_augmentation(spec.mean, spec.std, len(self.bands))

    def _splits(self, val_tiles: Sequence[str] | None) -> dict[str, list[str]]:
        splits = {k: list(v) for k, v in self.info.splits.items()}
        if val_tiles is not None and self.info.spatial_split is not None:
            raise ConfigError(
                f"val_tiles cannot be used with {self.root}: its splits are spatial blocks "
                "(dataset.json 'spatial_split'); prepare the data with --val-tiles instead"
            )
        if val_tiles is not None:
            pool = splits.get("train", []) + splits.get("val", [])
            unknown = sorted(set(val_tiles) - set(pool))
            if unknown:
                raise ConfigError(f"val_tiles {unknown} are not training tiles of {self.root}")
            splits["train"] = [t for t in pool if t not in val_tiles]
            splits["val"] = list(val_tiles)
        return splits

    def _check_options(self) -> None:
        missing = [b for b in self.bands if b not in self.info.bands]
        if missing:
            raise ConfigError(f"bands {missing} not in the dataset's bands {self.info.bands}")
        if self.height is not None and self.height not in self.info.height:
            have = ", ".join(self.info.height) or "none"
            raise ConfigError(f"height {self.height!r} not in {self.root} (has: {have})")
        spatial = self.info.spatial_split
        if spatial is not None and self.patch_size > spatial.patch_size:
            warnings.warn(
                f"patch_size {self.patch_size} is larger than the {spatial.patch_size} px patches "
                f"the spatial split of {self.root} was made for, so its {spatial.buffer:g} m "
                "buffer is less than a patch (prepare the data with a larger --patch-size)",
                stacklevel=3,
            )

    @property
    def model_spec(self) -> ModelSpec:
        """Input contract of models trained on this datamodule."""
        stats = self.info.stats
        names = list(self.bands) + ([self.height] if self.height else [])
        missing = [n for n in names if n not in stats]
        if missing:
            raise ConfigError(f"{self.root}/dataset.json has no statistics for {missing}")
        return ModelSpec(
            bands=(*self.bands, HEIGHT_BAND) if self.height else self.bands,
            mean=tuple(stats[n]["mean"] for n in names),
            std=tuple(stats[n]["std"] for n in names),
            gsd=self.info.ground_gsd or self.info.gsd,
            patch_size=int(self.patch_size),
            classes=self.info.classes,
            height_source=self.height,
            dtype=stats[self.bands[0]].get("dtype"),
            value_range=_value_range(stats, names),
        )

    def build_dataset(self, tile_ids: Sequence[str]) -> GeoDataset:
        """The image (and height) ``&`` label dataset of some tiles.

        The intersection joins samples with :func:`concat_images`, which avoids
        copying the image twice.

        Args:
            tile_ids: Tiles to include.

        Returns:
            A TorchGeo dataset yielding ``image`` and ``mask`` samples.

        Raises:
            ConfigError: If *tile_ids* is empty.
        """
        if not tile_ids:
            raise ConfigError(f"{self.root}: no tiles in this split")
        files = self.info.tile_files
        dataset: GeoDataset = ImageRaster(
            files(self.root, tile_ids, "image"), bands=self.bands, all_bands=self.info.bands
        )
        if self.height:
            fill = self.info.stats[self.height]["mean"]
            height = HeightRaster(files(self.root, tile_ids, self.height), nodata_fill=fill)
            dataset = IntersectionDataset(dataset, height, collate_fn=concat_images)
        labels = LabelRaster(files(self.root, tile_ids, "label"))
        return IntersectionDataset(dataset, labels, collate_fn=concat_images)

    def setup(self, stage: str) -> None:
        """Build datasets and samplers for *stage* (``fit``, ``validate`` or ``test``)."""
        if stage == "fit":
            self.train_dataset = self.build_dataset(self.splits.get("train", []))
            self.train_sampler = RandomPatchSampler(
                self.train_dataset,
                size=self.patch_size,
                length=self.length,
                roi=self._train_roi(),
                generator=self.seed,
            )
        if stage in ("fit", "validate"):
            self.val_dataset = self.build_dataset(self.splits.get("val", []))
            self.val_sampler = TileGriddedPatchSampler(
                self.val_dataset, size=self.patch_size, regions=self._regions("val")
            )
        if stage == "test":
            self.test_dataset = self.build_dataset(self.splits.get("test", []))
            self.test_sampler = TileGriddedPatchSampler(
                self.test_dataset, size=self.patch_size, regions=self._regions("test")
            )

    def _patch_side(self) -> float:
        """Side of a patch in CRS units."""
        return float(self.patch_size) * self.info.gsd

    def _regions(self, split: str) -> list[Box] | None:
        """Regions of *split* at least a patch wide, if the dataset has a spatial split.

        Raises:
            ConfigError: If no region of *split* holds a patch.
        """
        spatial = self.info.spatial_split
        if spatial is None:
            return None
        boxes = spatial.boxes(split, self._patch_side())
        if not boxes:
            raise ConfigError(
                f"{self.root}: no {split} region of the spatial split holds a "
                f"{self.patch_size} px patch; prepare the data with --patch-size {self.patch_size}"
            )
        return boxes

    def _train_roi(self) -> shapely.Geometry | None:
        """The training regions as one geometry, if the dataset has a spatial split.

        Raises:
            ConfigError: If no random patch fits in the training regions.
        """
        boxes = self._regions("train")
        if boxes is None:
            return None
        roi = shapely.union_all([shapely.box(*b) for b in boxes])
        radius = self._patch_side() / math.sqrt(2)
        if shapely.buffer(roi, -radius).is_empty:
            raise ConfigError(
                f"{self.root}: the training regions of the spatial split are too narrow for "
                f"random {self.patch_size} px patches; use larger --split-block"
            )
        return roi

    def teardown(self, stage: str) -> None:
        """Close the file handles of every dataset once *stage* is over."""
        for dataset in (self.train_dataset, self.val_dataset, self.test_dataset):
            for part in _leaves(dataset):
                part.close()

    def _dataloader_factory(self, split: str) -> DataLoader[Sample]:
        """TorchGeo's loader factory, but keeping the last partial training batch."""
        loader = super()._dataloader_factory(split)
        if split == "train" and len(loader) == 0:
            raise ConfigError(
                f"{self.root}: fewer training patches ({len(self.train_sampler)}) "
                f"than batch_size {self.batch_size}"
            )
        return loader


def _leaves(dataset: GeoDataset | None) -> Iterator[AlignedRasterDataset]:
    """The file-reading datasets inside *dataset* (which may be an intersection)."""
    if isinstance(dataset, AlignedRasterDataset):
        yield dataset
    for child in getattr(dataset, "datasets", ()):
        yield from _leaves(child)


def _value_range(
    stats: dict[str, dict[str, Any]], names: Sequence[str]
) -> tuple[tuple[float, float], ...] | None:
    """Per-band ``(min, max)`` from ``dataset.json`` statistics, or ``None`` if any is missing."""
    if any("min" not in stats[n] or "max" not in stats[n] for n in names):
        return None
    return tuple((float(stats[n]["min"]), float(stats[n]["max"])) for n in names)
