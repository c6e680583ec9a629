"""The CPU kernels store their outputs past the caches (non-temporal stores) when a call writes
4 MiB or more and its largest output is under 32 MiB (`streams` in csrc/cpu/vec_helpers.h); the
other tests' shapes are smaller. Here every op whose kernels do so (prednet_error's backward only)
runs at a shape on that path, forward and backward, against the float64 reference: contiguous and
channels_last (vector-aligned rows, so streamed), float64 (its own streamed store), and an odd
size (rows mostly off the vector alignment: plain stores beside streamed ones, within one output)."""
import pytest
import torch

from op_table import OPS, inputs
from oracle import check

# n = B*C*S = 589,824 elements a block: stlstm_memory's forward writes 40 bytes an element (23.6 MB,
# largest output 14 MB) and its backward 64 (37.7 MB, largest 16.5 MB); prednet_error's backward,
# the smallest, 8 (4.7 MB). Every call is above 4 MiB, every output below 32 MiB.
# float64 at half the positions keeps its largest output (stlstm_memory's backward) under 32 MiB.
B, C, ALIGNED, ODD, FP64 = 4, 32, (64, 72), (63, 71), (32, 72)
OPTS = {"convlstm_gates": {"forget_bias": 1.0}, "stlstm_memory": {}, "stlstm_output": {},
        "prednet_error": {"clip_max": 1.0, "return_mean": True}}


@pytest.mark.parametrize("backend", ["cpu"], indirect=True)  # the only backend with these stores
@pytest.mark.parametrize("layout,spatial,dtype", [
    ("contiguous", ALIGNED, torch.float32), ("channels_last", ALIGNED, torch.float32),
    ("contiguous", FP64, torch.float64), ("contiguous", ODD, torch.float32)],
    ids=["nchw", "channels_last", "fp64", "odd"])
@pytest.mark.parametrize("op", list(OPTS))
def test_streamed_outputs_match_reference(backend, op, layout, spatial, dtype):
    x = inputs(op, B=B, C=C, spatial=spatial, dtype=dtype, views={arg.name: layout for arg in OPS[op]})
    check(backend, op, x, OPTS[op])
