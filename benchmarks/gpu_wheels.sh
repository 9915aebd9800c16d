#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_suite.sh needs on the GPU machine into .whl/.
#
#   bash benchmarks/gpu_wheels.sh
#
# The device machine (Python 3.12, x86-64) has torch, timm and numpy but none of
# geoct's geospatial packages. This fetches, for CPython 3.12 manylinux x86-64 and
# without dependencies, the versions installed here of rasterio, affine, pyproj,
# shapely and segmentation_models_pytorch (about 50 MB: a device call carries at
# most 64 MiB with the repository), and keeps .whl/ out of git. Then run the suite
# with `carry: [".whl"]`; it installs them into /tmp/site with pip --no-index.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$repo/.venv/bin/python}"
cd "$repo"
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
pins=$("$python" - <<'PY'
from importlib.metadata import version
names = ["rasterio", "affine", "pyproj", "shapely", "segmentation_models_pytorch"]
print(" ".join(f"{n}=={version(n)}" for n in names))
PY
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
# shellcheck disable=SC2086
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d .whl $pins
du -sh .whl
ls .whl
