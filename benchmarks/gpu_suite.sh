#!/usr/bin/env bash
# geoct's GPU benchmark suite, sized for one device call of at most 8 minutes.
#
#   bash benchmarks/gpu_suite.sh [--smoke] [--quality MINUTES] [--budget SECONDS] [OUT_DIR]
#
# Runs, in this order and while the time budget (default 450 s) allows:
#   1. benchmarks/predict_throughput.py for Swin-T + FPN: 512 px windows, bf16,
#      automatic batch, a 20k x 20k uint8 RGBIR scene, classes plus confidence,
#      peak GPU memory against a 2048 px scene (targets: end to end >= 0.8 x
#      forward only; memory <= 1.15x);
#   2. benchmarks/contrastive_overhead.py --device cuda --size 512 --batch 16 for
#      Swin-T, ViT-S/16 and PoolFormer-S12 (targets <= 1.10x step time, <= 1.05x
#      peak memory against the term off);
#   3. predict_throughput.py for ViT-S/16, if at least 120 s are left;
#   4. with --quality MINUTES: benchmarks/contrastive_quality.py in the paper's
#      regime (full-size Swin-T, 512 px synthetic crops, baseline against the term
#      at weight 0.1 and 1.0), one paired seed at a time while the minutes last.
#      bf16 training needs a precision option in geoct.experiment (not there yet).
#
# Everything lands in OUT_DIR (default: $OUT on the device machine, else
# benchmarks/results/gpu_suite): summary.json, suite.log (every command's output)
# and one JSON per benchmark; at most 8 files, so that all of them come back.
#
# It installs nothing by itself: the device machine has torch, timm and numpy but
# not rasterio, pyproj, shapely, affine or segmentation_models_pytorch. Wheels
# made with `bash benchmarks/gpu_wheels.sh` (into .whl/, about 50 MB) are
# installed from .whl/ into /tmp/site (pip --no-index, said in the log) when the
# call carries .whl; without them the parts that need them are skipped, saying
# which modules are missing. The training stack of --quality (TorchGeo, pyogrio,
# ...) is larger than one call carries; it runs where it is installed.
#
# --smoke runs the same steps on CPU with tiny sizes in under a minute (tested in
# tests/benchmarks/test_gpu_suite.py).
set -uo pipefail

smoke=0
quality=0
budget=450
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --quality) quality="$2"; shift ;;
    --budget) budget="$2"; shift ;;
    -h|--help) sed -n '2,35p' "$0"; exit 0 ;;
    -*) echo "gpu_suite: unknown option $1" >&2; exit 2 ;;
    *) out="$1" ;;
  esac
  shift
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
out="${out:-${OUT:-$repo/benchmarks/results/gpu_suite}}"
mkdir -p "$out"
log="$out/suite.log"
: > "$log"
python="${PYTHON:-python3}"
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
start=$SECONDS
parts=()

say() { echo "[gpu_suite $((SECONDS - start))s] $*" | tee -a "$log"; }
left() { echo $((budget - (SECONDS - start))); }

missing() {  # missing MODULE... : print those that do not import
  "$python" - "$@" <<'EOF'
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

# run NAME SECONDS CMD...: run a benchmark under a time limit, log it, record the outcome.
run() {
  local name="$1" limit="$2"
  shift 2
  if [ "$limit" -lt 20 ]; then
    say "$name: skipped, $(left) s of the budget left"
    parts+=("{\"name\": \"$name\", \"status\": \"skipped: no time left\"}")
    return
  fi
  say "$name: $* (limit ${limit} s)"
  local t0=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$log" 2>&1
  local rc=$?
  local status=ok
  [ $rc -eq 0 ] || status="failed (exit $rc)"
  [ $rc -eq 124 ] && status="timed out after ${limit} s"
  say "$name: $status in $((SECONDS - t0)) s"
  parts+=("{\"name\": \"$name\", \"status\": \"$status\", \"seconds\": $((SECONDS - t0))}")
}

skip() {  # skip NAME REASON
  say "$1: skipped, $2"
  parts+=("{\"name\": \"$1\", \"status\": \"skipped: $2\"}")
}

if [ -d "$repo/.whl" ] && ls "$repo"/.whl/*.whl >/dev/null 2>&1 \
   && [ -n "$(missing rasterio pyproj shapely segmentation_models_pytorch)" ]; then
  say "installing the carried wheels of .whl/ into /tmp/site (pip --no-index --no-deps):"
  ls "$repo"/.whl/*.whl | sed 's/^/  /' | tee -a "$log"
  if "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site "$repo"/.whl/*.whl >> "$log" 2>&1; then
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    say "installing the wheels failed (see above)"
  fi
fi

"$python" - >> "$log" 2>&1 <<'EOF'
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__,
      "cuda", torch.cuda.is_available() and torch.cuda.get_device_name())
EOF
command -v nvidia-smi >/dev/null && nvidia-smi -L >> "$log" 2>&1

if [ "$smoke" = 1 ]; then
  device=cpu
  predict_args=(--model conv --width 4 --depth 1 --window 64 --overlap 16 --scene-size 256 --repeats 1
                --forward-windows 8 --confidence --device cpu)
  vit_args=()
  overhead_args=(--device cpu --size 64 --batch 2 --steps 1 --warmup 1 --backbones poolformer_s12)
else
  device=cuda
  if ! "$python" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
    say "no CUDA device: nothing to measure (use --smoke on CPU)"
    exit 1
  fi
  predict_args=(--model swin_t --device cuda --scene-size 20000 --confidence --repeats 1
                --gpu-memory-sizes 2048)
  vit_args=(--model vit_s16 --device cuda --scene-size 20000 --confidence --repeats 1)
  overhead_args=(--device cuda --size 512 --batch 16 --steps 10
                 --backbones swin_t vit_s16 poolformer_s12)
fi

need=$(missing torch timm rasterio pyproj shapely affine)
if [ -n "$need" ]; then
  skip predict_swin_t "missing modules: $need (carry wheels: bash benchmarks/gpu_wheels.sh)"
else
  run predict_swin_t $(( $(left) < 200 ? $(left) : 200 )) \
    "$python" "$repo/benchmarks/predict_throughput.py" "${predict_args[@]}" \
    --output "$out/predict_swin_t.json"
fi

need=$(missing torch timm segmentation_models_pytorch)
if [ -n "$need" ]; then
  skip contrastive_overhead "missing modules: $need (carry wheels: bash benchmarks/gpu_wheels.sh)"
else
  run contrastive_overhead $(( $(left) < 240 ? $(left) : 240 )) \
    "$python" "$repo/benchmarks/contrastive_overhead.py" "${overhead_args[@]}" \
    --output "$out/contrastive_overhead.json"
fi

if [ ${#vit_args[@]} -gt 0 ]; then
  need=$(missing torch timm rasterio pyproj shapely affine)
  if [ -n "$need" ]; then
    skip predict_vit_s16 "missing modules: $need"
  elif [ "$(left)" -lt 120 ]; then
    skip predict_vit_s16 "$(left) s left, 120 s needed"
  else
    run predict_vit_s16 $(( $(left) - 10 )) \
      "$python" "$repo/benchmarks/predict_throughput.py" "${vit_args[@]}" \
      --output "$out/predict_vit_s16.json"
  fi
fi

if [ "$quality" != 0 ]; then
  quality_end=$((SECONDS + ${quality%.*} * 60))
  need=$(missing torchgeo lightning geopandas pyogrio)
  if [ -n "$need" ] || ! "$python" -c 'import geoct.experiment' >> "$log" 2>&1; then
    skip contrastive_quality "the training stack does not import (missing: ${need:-see log})"
  else
    quality_args=(--device "$device" --tiles 8 --size 512 --patch-size 512 --epochs 4
                  --set 'backbone_kwargs={}' decoder_channels=128
                  --variant w0.1 contrastive_weight=0.1 --variant w1.0 contrastive_weight=1.0)
    [ "$smoke" = 1 ] && quality_args=(--device cpu --tiles 4 --size 128 --epochs 1 --length 4)
    seed=0
    while [ $((quality_end - SECONDS)) -ge 30 ]; do
      run "contrastive_quality_seed$seed" $((quality_end - SECONDS)) \
        "$python" "$repo/benchmarks/contrastive_quality.py" "${quality_args[@]}" \
        --seeds "$seed" --out "$out/quality_seed$seed.json"
      seed=$((seed + 1))
    done
    "$python" - "$out" >> "$log" 2>&1 <<'EOF'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
seeds = sorted(out.glob("quality_seed*.json"))
runs = [json.loads(p.read_text()) for p in seeds]
(out / "contrastive_quality.json").write_text(json.dumps({"seeds": runs}, indent=2))
for p in seeds:
    p.unlink()
EOF
  fi
fi

parts_file=$(mktemp)
printf '%s\n' "${parts[@]}" > "$parts_file"
"$python" - "$out" "$device" "$((SECONDS - start))" "$parts_file" >> "$log" 2>&1 <<'EOF'
import json, pathlib, sys
out, device, seconds = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
lines = pathlib.Path(sys.argv[4]).read_text().splitlines()
parts = [json.loads(line) for line in lines if line.strip()]
figures = {}
for name in ("predict_swin_t", "predict_vit_s16"):
    path = out / f"{name}.json"
    if path.exists():
        r = json.loads(path.read_text())
        figures[name] = {
            "forward_windows_per_s": r["forward_windows_per_s"],
            "end_to_end_windows_per_s": r["end_to_end"]["windows_per_s"],
            "end_to_end_megapixels_per_s": r["end_to_end"]["megapixels_per_s"],
            "ratio": r["ratio"],
            "publish_seconds": r["end_to_end"]["publish_seconds"],
            "memory_ratio": r["memory_ratio"],
            "batch_size": r["batch_size"],
        }
path = out / "contrastive_overhead.json"
if path.exists():
    rows = json.loads(path.read_text())["rows"]
    figures["contrastive_overhead"] = {
        f"{r['backbone']}/{r['variant']}": {"time": r["time_ratio"], "memory": r["memory_ratio"]}
        for r in rows
    }
summary = {"device": device, "seconds": seconds, "parts": parts, "figures": figures}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
EOF
say "done: $out/summary.json"
failed=$(grep -c '"status": "failed\|"status": "timed out' "$parts_file")
rm -f "$parts_file"
[ "$failed" -eq 0 ]
