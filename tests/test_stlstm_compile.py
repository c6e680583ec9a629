"""stlstm_memory / stlstm_output inside torch.compile and torch.library.opcheck."""
import pytest
import torch

import predkern
from predkern import backends
from conftest import backend_device
from oracle import compiled_matches_eager
from test_stlstm_ops import memory_inputs, output_inputs


def _cpp_or_skip():
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")


def test_opcheck_cpp_ops():
    _cpp_or_skip()
    x = {k: v.requires_grad_(True) for k, v in memory_inputs(dtype=torch.float64).items()}
    args = (*x.values(), 1.0, True)
    torch.library.opcheck(torch.ops.predkern.stlstm_memory, args)
    torch.library.opcheck(torch.ops.predkern.stlstm_memory, (*x.values(), 0.5, False))
    detached = [a.detach() if torch.is_tensor(a) else a for a in args]  # below the autograd kernel
    torch.library.opcheck(torch.ops.predkern.stlstm_memory_forward, detached)
    mem, dc, dm, pre = torch.ops.predkern.stlstm_memory_forward(*detached)
    torch.library.opcheck(torch.ops.predkern.stlstm_memory_backward,
                          (torch.randn_like(mem), None, torch.randn_like(dm), pre, detached[3], detached[4],
                           torch.float64))
    y = {k: v.requires_grad_(True) for k, v in output_inputs(dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.stlstm_output, tuple(y.values()))
    detached = [t.detach() for t in y.values()]
    torch.library.opcheck(torch.ops.predkern.stlstm_output_forward, detached)
    h, o_gate, tanh_last = torch.ops.predkern.stlstm_output_forward(*detached)
    torch.library.opcheck(torch.ops.predkern.stlstm_output_backward, (torch.randn_like(h), o_gate, tanh_last))


@pytest.mark.interpreter
def test_opcheck_triton_ops():
    if backends.unavailable_reason("triton", "cpu"):
        pytest.skip(backends.unavailable_reason("triton", "cpu"))
    x = {k: v.requires_grad_(True) for k, v in memory_inputs(C=2, spatial=(3, 2), dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.stlstm_memory_triton, (*x.values(), 1.0, True, True))
    y = {k: v.requires_grad_(True) for k, v in output_inputs(C=2, spatial=(3, 2), dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.stlstm_output_triton, (*y.values(), True))


def _cell_step(x_cat, h_cat, m_cat, c, m, o_conv, last_conv):
    mem, delta_c, delta_m = predkern.stlstm_memory(x_cat, h_cat, m_cat, c, m)
    h = predkern.stlstm_output(x_cat, h_cat, o_conv + mem[:, :3], last_conv)
    return (h * h).sum() + mem.sum() + (delta_c * delta_m).sum()


def test_compile_fullgraph_no_graph_break(backend):
    if backend == "triton" and backend_device(backend) == "cpu":
        pytest.skip("compiling Triton kernels needs a GPU (the interpreter runs only eagerly)")
    device = backend_device(backend)
    x = {**memory_inputs(device=device), **{k: v for k, v in output_inputs(device=device).items()
                                            if k in ("o_conv", "last_conv")}}
    x = {k: v.requires_grad_(True) for k, v in x.items()}
    compiled_matches_eager(_cell_step, x, backend)
