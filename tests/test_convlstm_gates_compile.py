"""convlstm_gates inside torch.compile and torch.library.opcheck (the C++ and Triton ops)."""
import pytest
import torch

import predkern
from predkern import backends
from conftest import backend_device
from oracle import compiled_matches_eager


def _inputs(device, dtype=torch.float32, requires_grad=True):
    B, C, H, W = 2, 3, 5, 7
    x = dict(gates_x=torch.randn(B, 4 * C, H, W), c=torch.randn(B, C, H, W),
             gates_h=torch.randn(B, 4 * C, H, W), bias=torch.randn(4 * C), peephole=torch.randn(3, C, H, W))
    return {k: v.to(device, dtype).requires_grad_(requires_grad) for k, v in x.items()}


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
def test_opcheck_cpp_ops(gate_act):
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    x = _inputs("cpu")
    args = (x["gates_x"], x["c"], x["gates_h"], x["bias"], x["peephole"], 1.0, "ifog", gate_act)
    torch.library.opcheck(torch.ops.predkern.convlstm_gates, args)
    torch.library.opcheck(torch.ops.predkern.convlstm_gates, (x["gates_x"], x["c"], None, None, None, 0.0,
                                                              "ifgo", gate_act))
    # the two halves sit below the public op's autograd kernel: they take no grad themselves
    detached = [a.detach() if torch.is_tensor(a) else a for a in args]
    torch.library.opcheck(torch.ops.predkern.convlstm_gates_forward, detached)
    h, c_new, pre = torch.ops.predkern.convlstm_gates_forward(*detached)
    torch.library.opcheck(torch.ops.predkern.convlstm_gates_backward,
                          (torch.randn_like(h), None, pre, x["c"].detach(), x["peephole"].detach(),
                           torch.float32, "ifog", gate_act))


@pytest.mark.interpreter
def test_opcheck_triton_op():
    if backends.unavailable_reason("triton", "cpu"):
        pytest.skip(backends.unavailable_reason("triton", "cpu"))
    x = _inputs("cpu", torch.float64)
    args = (x["gates_x"], x["c"], x["gates_h"], x["bias"], x["peephole"], 1.0, "ifog", "sigmoid", True)
    torch.library.opcheck(torch.ops.predkern.convlstm_gates_triton, args)


def _step(gates_x, c, gates_h, bias, peephole):
    h, c_new = predkern.convlstm_gates(gates_x, c, gates_h, bias, peephole, forget_bias=1.0, gate_order="ifog")
    return (h * h).sum() + c_new.sum()


def test_compile_fullgraph_no_graph_break(backend):
    """fullgraph=True raises on any graph break; the compiled loss and grads match eager."""
    if backend == "triton" and backend_device(backend) == "cpu":
        pytest.skip("compiling Triton kernels needs a GPU (the interpreter runs only eagerly)")
    device = backend_device(backend)
    compiled_matches_eager(_step, _inputs(device), backend)


def test_compile_inductor_cpu_no_recompile_across_steps():
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(_step, fullgraph=True)
    with backends.use("cpu"):
        for _ in range(3):
            x = _inputs("cpu")
            torch.autograd.grad(compiled(**x), list(x.values()))
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
