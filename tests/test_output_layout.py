"""SPEC.md section 5: outputs follow the memory format of the main input (each op's first
argument), whatever the layouts of the others, on every backend."""
import pytest
import torch

import predkern
from conftest import backend_device
from op_table import OPS, inputs
from predkern import backends

# decoupling_loss returns a scalar
LAYOUT_OPS = [op for op in OPS if op != "decoupling_loss"]


@pytest.mark.parametrize("main_channels_last", [True, False], ids=["main_channels_last", "main_contiguous"])
@pytest.mark.parametrize("op", LAYOUT_OPS)
def test_outputs_follow_the_main_input(backend, op, main_channels_last):
    main = OPS[op][0].name
    others = "contiguous" if main_channels_last else "channels_last"
    views = {arg.name: others for arg in OPS[op][1:]}
    views[main] = "channels_last" if main_channels_last else "contiguous"
    x = inputs(op, C=3, spatial=(4, 5), device=backend_device(backend), views=views)
    fmt = torch.channels_last if main_channels_last else torch.contiguous_format
    with backends.use(backend):
        outputs = getattr(predkern, op)(**x)
    if isinstance(outputs, torch.Tensor):  # stlstm_output
        outputs = (outputs,)
    outputs = [t for t in outputs if isinstance(t, torch.Tensor) and t.dim() == 4]
    assert outputs
    for i, t in enumerate(outputs):
        assert t.is_contiguous(memory_format=fmt), f"output {i} does not follow `{main}`'s layout"
