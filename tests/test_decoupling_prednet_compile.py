"""decoupling_loss / prednet_error inside torch.compile and torch.library.opcheck."""
import pytest
import torch

import predkern
from predkern import backends
from conftest import backend_device
from oracle import compiled_matches_eager
from test_decoupling_loss import inputs as loss_inputs
from test_prednet_error import inputs as error_inputs


def test_opcheck_cpp_ops():
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    x = {k: v.requires_grad_(True) for k, v in loss_inputs(dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.decoupling_loss, tuple(x.values()))
    detached = [t.detach() for t in x.values()]
    torch.library.opcheck(torch.ops.predkern.decoupling_loss_forward, detached)
    loss, coefs = torch.ops.predkern.decoupling_loss_forward(*detached)
    torch.library.opcheck(torch.ops.predkern.decoupling_loss_backward,
                          (torch.ones_like(loss), *detached, coefs))
    y = {k: v.requires_grad_(True) for k, v in error_inputs(dtype=torch.float64).items()}
    for opts in ((True, 1.0, "pred", True), (False, None, "target", False)):
        torch.library.opcheck(torch.ops.predkern.prednet_error, (*y.values(), *opts))
    a, a_hat = (t.detach() for t in y.values())
    e, p, m = torch.ops.predkern.prednet_error(a, a_hat, True, 1.0, "pred", True)
    torch.library.opcheck(torch.ops.predkern.prednet_error_backward,
                          (torch.randn_like(e), None, torch.randn_like(m), a, a_hat, True, 1.0, "pred"))


@pytest.mark.interpreter
def test_opcheck_triton_ops():
    if backends.unavailable_reason("triton", "cpu"):
        pytest.skip(backends.unavailable_reason("triton", "cpu"))
    x = {k: v.requires_grad_(True) for k, v in loss_inputs(N=2, C=2, spatial=(3, 2), dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.decoupling_loss_triton, (*x.values(), True))
    y = {k: v.requires_grad_(True) for k, v in error_inputs(C=2, spatial=(3, 2), dtype=torch.float64).items()}
    torch.library.opcheck(torch.ops.predkern.prednet_error_triton, (*y.values(), True, 1.0, "pred", True, True))


def _step(delta_c, delta_m, a, a_hat):
    e, p, e_mean = predkern.prednet_error(a, a_hat, clip_max=1.0, return_mean=True)
    return predkern.decoupling_loss(delta_c, delta_m) + (e * e).sum() + p.sum() + e_mean.sum()


def test_compile_fullgraph_no_graph_break(backend):
    if backend == "triton" and backend_device(backend) == "cpu":
        pytest.skip("compiling Triton kernels needs a GPU (the interpreter runs only eagerly)")
    device = backend_device(backend)
    x = {**loss_inputs(device=device), **error_inputs(device=device)}
    x = {k: v.requires_grad_(True) for k, v in x.items()}
    compiled_matches_eager(_step, x, backend)
