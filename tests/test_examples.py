"""Smoke test of examples/train_bouncing.py: two iterations of each model on tiny frames write
both PNGs and give finite losses."""
import importlib.util
import math
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "train_bouncing.py"


def load_script():
    spec = importlib.util.spec_from_file_location("train_bouncing", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [
    pytest.param(["--model", "predrnn_v2"], id="predrnn_v2"),
    pytest.param(["--model", "prednet"], id="prednet"),
    pytest.param(["--model", "prednet", "--prednet-loss", "L_0"], id="prednet-L_0"),
    pytest.param(["--model", "prednet", "--prednet-extrap", "--prednet-loss", "L_all"], id="prednet-extrap-L_all"),
])
def test_train_bouncing_smoke(argv, tmp_path):
    script = load_script()
    tiny = ["--iters", "2", "--img-size", "16", "--frames", "6", "--hidden", "8", "--layers", "2",
            "--batch-size", "2", "--val-size", "2", "--device", "cpu", "--quiet", "--out", str(tmp_path)]
    result = script.main(argv + tiny)
    assert len(result["losses"]) == 2
    assert all(math.isfinite(loss) for loss in result["losses"])
    assert math.isfinite(result["val_mse"])
    for key in ("loss_curve", "predictions"):
        path = Path(result[key])
        assert path.parent == tmp_path and path.suffix == ".png" and path.stat().st_size > 0


def test_bouncing_data():
    script = load_script()
    data = script.BouncingShapes(16, 5, "mixed", seed=0)
    batch = data.batch(3)
    assert batch.shape == (3, 5, 16, 16, 1)
    assert 0.0 <= batch.min() and batch.max() <= 1.0 and batch.amax(dim=(2, 3, 4)).min() > 0.5  # a shape in every frame
    again = script.BouncingShapes(16, 5, "mixed", seed=0).batch(3)
    assert (batch == again).all()
