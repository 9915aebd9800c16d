"""The GPU benchmark suite's --smoke mode and the null-model path of the predict benchmark."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(
        f"bench_{name}", ROOT / "benchmarks" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings("ignore:.*checkpoint's GSD:UserWarning")
def test_null_model_benchmark_reports_stages_and_floor(tmp_path: Path) -> None:
    bench = load_benchmark("predict_throughput")
    out = tmp_path / "null.json"
    args = ["--null-model", "--device", "cpu", "--scene-size", "600", "--window", "128"]
    args += ["--overlap", "32", "--repeats", "2", "--output", str(out), "--work", str(tmp_path)]
    assert bench.main(args) == 0
    report = json.loads(out.read_text())
    assert len(report["ratios"]) == len(report["floor_ratios"]) == 2
    assert report["model"].startswith("one 1x1 conv")
    assert report["end_to_end"]["windows_run"] == report["end_to_end"]["windows"] == 49
    assert set(report["stage_ms"]) == {
        "read", "to_device", "forward", "blend", "finalise", "to_host", "write"
    }  # fmt: skip
    assert report["stage_ms"]["read"] > 0 and report["stage_ms"]["forward"] > 0
    floor = report["io_floor"]
    assert floor["read_seconds"] > 0 and floor["write_seconds"] > 0
    assert report["floor_ratio"] == pytest.approx(
        report["end_to_end"]["seconds"] / floor["seconds"]
    )
    assert 0 < report["end_to_end"]["publish_seconds"] < report["end_to_end"]["seconds"]


@pytest.mark.filterwarnings("ignore:.*checkpoint's GSD:UserWarning")
def test_memory_table_reports_the_median_of_repeated_runs(tmp_path: Path) -> None:
    bench = load_benchmark("predict_throughput")
    out = tmp_path / "rss.json"
    args = ["--null-model", "--device", "cpu", "--scene-size", "300", "--window", "128"]
    args += ["--overlap", "32", "--repeats", "1", "--sizes", "300", "600", "--rss-repeats", "2"]
    assert bench.main([*args, "--output", str(out), "--work", str(tmp_path)]) == 0
    rows = json.loads(out.read_text())["memory"]["rss"]
    assert [row["size"] for row in rows] == [300, 600]
    assert [row["windows"] for row in rows] == [1, 4]
    assert [row["runs"] for row in rows] == [4, 1]  # the small scene runs as many windows
    for row in rows:
        assert row["windows_run"] == 4
        assert len(row["peaks_rss_mb"]) == len(row["peaks_rss_equal_windows_mb"]) == 2
        assert row["peak_rss_mb"] == pytest.approx(sum(row["peaks_rss_mb"]) / 2)
        assert row["peak_rss_equal_windows_mb"] >= row["peak_rss_mb"] > row["rss_before_predict_mb"]
    ratios = json.loads(out.read_text())["memory_ratio"]
    equal = [row["peak_rss_equal_windows_mb"] for row in rows]
    assert ratios["rss"] == pytest.approx(equal[1] / equal[0])
    assert ratios["rss_one_run"] == pytest.approx(rows[1]["peak_rss_mb"] / rows[0]["peak_rss_mb"])


def test_gpu_suite_smoke_runs_on_cpu(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable}
    env.pop("OUT", None)
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--smoke", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert [p["name"] for p in summary["parts"]] == ["predict_swin_t", "contrastive_overhead"]
    assert all(p["status"] == "ok" for p in summary["parts"])
    assert summary["figures"]["predict_swin_t"]["end_to_end_windows_per_s"] > 0
    assert "poolformer_s12/ours" in summary["figures"]["contrastive_overhead"]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= 8 and "suite.log" in files
