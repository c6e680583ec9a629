"""The CPU kernels store their outputs past the caches (non-temporal stores) when a call writes
4 MiB or more and its largest output is under 32 MiB (`streams` in csrc/cpu/vec_helpers.h); the
other tests' shapes are smaller. Here every op whose kernels do so runs at a shape on that path
both ways, against the float64 reference: contiguous and channels_last (vector-aligned rows, so
streamed), and an odd size (rows mostly off the vector alignment: plain stores beside streamed
ones, within one output)."""
import os

import pytest
import torch

from predkern import backends
from op_table import inputs
from oracle import check

# n = B*C*S = 589,824 elements a block: stlstm_memory's forward writes 40 bytes an element (23.6 MB,
# largest output 14 MB) and its backward 64 (37.7 MB, largest 16.5 MB); prednet_error's backward,
# the smallest, 8 (4.7 MB). Every call is above 4 MiB, every output below 32 MiB.
B, C, ALIGNED, ODD = 4, 32, (64, 72), (63, 71)
OPTS = {"convlstm_gates": {"forget_bias": 1.0}, "stlstm_memory": {}, "stlstm_output": {},
        "prednet_error": {"clip_max": 1.0, "return_mean": True}}


@pytest.fixture
def cpu_backend():
    reason = backends.unavailable_reason("cpu", "cpu")
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the cpu backend must run in CI: {reason}")
        pytest.skip(reason)
    return "cpu"


@pytest.mark.parametrize("layout,spatial", [("contiguous", ALIGNED), ("channels_last", ALIGNED),
                                            ("contiguous", ODD)], ids=["nchw", "channels_last", "odd"])
@pytest.mark.parametrize("op", list(OPTS))
def test_streamed_outputs_match_reference(cpu_backend, op, layout, spatial):
    x = inputs(op, B=B, C=C, spatial=spatial, views={name: layout for name in ("gates_x", "gates_h", "c", "x_cat",
                                                                              "h_cat", "m_cat", "m", "o_conv",
                                                                              "last_conv", "a", "a_hat")})
    check(cpu_backend, op, x, OPTS[op])
