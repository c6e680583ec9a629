"""benchmarks/memory_peak.py on the CPU: the peak of a training step's live allocations, per
contender, from the profiler's memory events."""
import importlib.util
import os
import sys

import pytest

from predkern.nn import stlstm_cell

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "memory_peak.py")


def load_script(monkeypatch):
    """The script as a module, with the sys.path entry it adds for itself (the source tree) dropped
    afterwards: later tests, and the processes they spawn, import predkern as installed (the CUDA
    emulation's instrumented copy, in its runs)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    spec = importlib.util.spec_from_file_location("memory_peak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("merged_convs", [False, True], ids=["cpu_path", "gpu_path"])
def test_predrnn_v2_training_step_peaks_no_higher_than_the_plain_model(merged_convs, capsys, monkeypatch):
    """PredRNN-V2's training step at the CPU training config (float32), on the CPU's code path and
    on the GPU's (conv_o and conv_last as one conv): predkern's peak is positive and no higher than
    the plain model's (117 vs 159 MiB measured); the GPU path's switch is put back afterwards."""
    merges = stlstm_cell._merges_convs
    args = ["--device", "cpu", "--shapes", "train", "--ops", "predrnn_v2_train", "--mode", "forward+backward"]
    peaks = load_script(monkeypatch).main(args + (["--merged-convs"] if merged_convs else []))
    ours, plain = peaks["predrnn_v2_train[train]", "predkern-cpu"], peaks["predrnn_v2_train[train]", "eager"]
    assert 0 < ours <= plain, f"predkern's peak {ours} bytes, the plain model's {plain}"
    assert stlstm_cell._merges_convs is merges
    assert "predkern-cpu" + (" (merged convs)" if merged_convs else "") + ": peak" in capsys.readouterr().out
