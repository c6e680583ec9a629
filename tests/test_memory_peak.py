"""benchmarks/memory_peak.py on the CPU: the peak of a training step's live allocations, per
contender, from the profiler's memory events."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import memory_peak  # noqa: E402
from predkern.nn import stlstm_cell  # noqa: E402


@pytest.mark.parametrize("merged_convs", [False, True], ids=["cpu_path", "gpu_path"])
def test_predrnn_v2_training_step_peaks_no_higher_than_the_plain_model(merged_convs, capsys):
    """PredRNN-V2's training step at the CPU training config (float32), on the CPU's code path and
    on the GPU's (conv_o and conv_last as one conv): predkern's peak is positive and no higher than
    the plain model's (117 vs 159 MiB measured); the GPU path's switch is put back afterwards."""
    merges = stlstm_cell._merges_convs
    args = ["--device", "cpu", "--shapes", "train", "--ops", "predrnn_v2_train", "--mode", "forward+backward"]
    peaks = memory_peak.main(args + (["--merged-convs"] if merged_convs else []))
    ours, plain = peaks["predrnn_v2_train[train]", "predkern-cpu"], peaks["predrnn_v2_train[train]", "eager"]
    assert 0 < ours <= plain, f"predkern's peak {ours} bytes, the plain model's {plain}"
    assert stlstm_cell._merges_convs is merges
    assert "predkern-cpu" + (" (merged convs)" if merged_convs else "") + ": peak" in capsys.readouterr().out
