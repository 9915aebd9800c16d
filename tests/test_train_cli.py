import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from geoct.cli import main
from geoct.tasks import load_model

CONFIG = Path(__file__).parents[1] / "configs" / "synthetic_tiny.yaml"
FAMILIES = {
    "vit": [
        "--model.backbone=vit_small_patch16_224",
        '--model.backbone_kwargs={"embed_dim": 32, "depth": 4, "num_heads": 2}',
    ],
    "poolformer": ["--model.backbone=poolformer_s12", "--model.backbone_kwargs={}"],
}


def geoct(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "geoct", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_dev_run(family: str, synthetic_root: Path, tmp_path: Path) -> None:
    proc = geoct(
        "fit",
        "--config",
        str(CONFIG),
        "--data.root",
        str(synthetic_root),
        "--trainer.fast_dev_run=true",
        "--trainer.enable_progress_bar=false",
        *FAMILIES[family],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_steps=1" in proc.stderr + proc.stdout


def test_swin_fit_writes_a_loadable_checkpoint(synthetic_root: Path, tmp_path: Path) -> None:
    proc = geoct(
        "fit",
        "--config",
        str(CONFIG),
        "--data.root",
        str(synthetic_root),
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=2",
        "--trainer.limit_val_batches=1",
        "--trainer.enable_progress_bar=false",
        "--data.init_args.length=8",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (last,) = tmp_path.glob("runs/synthetic_tiny/**/last.ckpt")
    model, spec = load_model(last)
    info = json.loads((synthetic_root / "dataset.json").read_text())
    assert list(spec.bands) == ["R", "G", "B", "IR"] and spec.gsd == info["ground_gsd"]
    assert spec.patch_size == 64 and spec.classes.num_classes == 6
    with torch.no_grad():
        assert model(torch.randn(1, 4, 64, 64)).shape == (1, 6, 64, 64)
    assert list(tmp_path.glob("runs/synthetic_tiny/**/config.yaml"))


def test_bad_config_is_one_line_error(
    synthetic_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--data.root",
            str(synthetic_root),
            "--trainer.fast_dev_run=true",
            "--model.in_channels=3",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2
    assert "geoct: error: in_channels=3 but the data has 4 bands (R, G, B, IR)" in err
    assert "Traceback" not in err
