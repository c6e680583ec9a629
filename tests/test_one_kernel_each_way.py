"""Each fused op runs as one predkern op forward and one backward, and no PyTorch op that computes
or copies around it (no torch.cat of outputs, no slice copies of the blocks it reads): what
TorchDispatchMode sees below autograd, on contiguous and channels_last inputs. The ConvLSTM op's bias and peephole gradients are reductions over batch and space that
follow its backward as PyTorch ops (README); the test runs it without them."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import predkern
from conftest import backend_device
from op_table import OPS, inputs
from predkern import backends

BOOKKEEPING = {"detach"}  # autograd's views of saved tensors: no memory traffic
OPTIONS = {"stlstm_memory": dict(return_deltas=True), "prednet_error": dict(clip_max=1.0, return_mean=True)}


class Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.overloadpacket.__name__ if func.namespace == "aten" else f"{func.namespace}::{func}")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("op", list(OPS))
def test_one_fused_op_forward_and_one_backward(backend, op):
    if backend == "reference":
        pytest.skip("the reference is eager PyTorch")
    x = inputs(op, C=3, spatial=(4, 5), device=backend_device(backend),
               views={"c": "channels_last"})
    if op == "convlstm_gates":
        x.pop("bias"), x.pop("peephole")
    for t in x.values():
        t.requires_grad_(True)
    with backends.use(backend):
        with Recorder() as forward:
            out = getattr(predkern, op)(**x, **OPTIONS.get(op, {}))
        outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
        grads = [torch.randn_like(o) for o in outs]
        with Recorder() as backward:
            torch.autograd.grad(outs, list(x.values()), grads)
    for name, recorded in (("forward", forward.ops), ("backward", backward.ops)):
        fused = [o for o in recorded if o.startswith("predkern::")]
        others = [o for o in recorded if not o.startswith("predkern::") and o not in BOOKKEEPING]
        assert len(fused) == 1 and not others, f"{name} of {op} dispatched {recorded}"
