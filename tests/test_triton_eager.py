"""The triton backend's eager path (predkern/ops/_triton_eager.py): outside torch.compile, on plain
tensors and under no dispatch mode, each op runs its Triton implementations through an
autograd.Function instead of its two custom ops, whose Python dispatch costs more per call than
the kernels at training sizes. Both paths give the same bits, forward and backward; the custom ops
stay where their dispatch is needed (a TorchDispatchMode, FakeTensorMode, torch.compile: the
compile tests)."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode

import predkern
from conftest import backend_device
from op_table import OPS, inputs
from predkern import backends

OPTIONS = {"stlstm_memory": dict(return_deltas=True), "prednet_error": dict(clip_max=1.0, return_mean=True)}
FUNCTIONS = {"convlstm_gates": "_TritonConvLSTMGates", "stlstm_memory": "_TritonSTLSTMMemory",
             "stlstm_output": "_TritonSTLSTMOutput", "decoupling_loss": "_TritonDecouplingLoss",
             "prednet_error": "_TritonPredNetError"}


class CustomOps(TorchDispatchMode):
    """Passes every op through, recording predkern's: its presence sends the op to the custom ops."""

    def __init__(self):
        super().__init__()
        self.predkern = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == "predkern":
            self.predkern.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def triton_backend():
    device = backend_device("triton")
    reason = backends.unavailable_reason("triton", device)
    if reason is not None:
        pytest.skip(reason)
    return device


def _outputs_and_grads(op, x):
    out = getattr(predkern, op)(**x, **OPTIONS.get(op, {}))
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    gen = torch.Generator().manual_seed(1)
    grads = [torch.randn(o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in outs]
    return outs, list(torch.autograd.grad(outs, list(x.values()), grads)), outs[0].grad_fn


@pytest.mark.interpreter
@pytest.mark.parametrize("op", list(OPS))
def test_eager_path_gives_the_custom_ops_bits(triton_backend, op):
    x = inputs(op, C=3, spatial=(4, 5), device=triton_backend, views={"c": "channels_last"})
    for t in x.values():
        t.requires_grad_(True)
    with backends.use("triton"):
        eager_outs, eager_grads, eager_fn = _outputs_and_grads(op, x)
        with CustomOps() as mode:
            op_outs, op_grads, _ = _outputs_and_grads(op, x)
    assert type(eager_fn).__name__ == FUNCTIONS[op] + "Backward", type(eager_fn).__name__
    assert sorted(mode.predkern) == [f"predkern.{op}_triton.default", f"predkern.{op}_triton_backward.default"]
    for got, want in zip(eager_outs + eager_grads, op_outs + op_grads):
        assert got.dtype == want.dtype and got.shape == want.shape and got.stride() == want.stride()
        assert torch.equal(got, want)


@pytest.mark.interpreter
def test_eager_path_without_grad_and_its_double_backward(triton_backend):
    x = inputs("convlstm_gates", C=3, spatial=(4, 5), device=triton_backend)
    with backends.use("triton"):
        with torch.no_grad():
            h, c = predkern.convlstm_gates(**x)
        assert h.grad_fn is None and not h.requires_grad
        x = {k: v.requires_grad_(True) for k, v in x.items()}
        h, c = predkern.convlstm_gates(**x)
        (g,) = torch.autograd.grad((h * h).sum(), x["gates_x"], create_graph=True)
        with pytest.raises(RuntimeError, match="differentiate twice"):  # as the custom op refuses it
            g.sum().backward()


def test_fake_tensors_take_the_custom_ops(triton_backend):
    """Under FakeTensorMode the kernels never launch: the custom ops' fake implementations answer."""
    with FakeTensorMode():
        x = {k: v.requires_grad_(True) for k, v in inputs("stlstm_memory", device=triton_backend).items()}
        with backends.use("triton"):
            mem, delta_c, delta_m = predkern.stlstm_memory(**x, return_deltas=True)
    assert mem.shape == (2, 6, 4, 5) and delta_c.shape == delta_m.shape == x["c"].shape  # mem: [c_new, m_new]
    assert "Fake" in type(mem).__name__
