"""decoupling_loss: PredRNN-V2's memory decoupling loss (SPEC.md section 3).

Backends: reference (predkern.reference), cpu / cuda (torch.ops.predkern.decoupling_loss, C++
autograd, see csrc/decoupling_loss.cpp) and triton (custom ops below, Python autograd;
in eager mode the same implementations through an autograd.Function, see _triton_eager.py).
Under torch.func transforms every backend's kernels run through _functorch.py.
Every backend reduces each (n, c) row in double, in a fixed order, and sums the rows in row
order: the same bits on every run, no float atomics.
"""
from __future__ import annotations

import torch
from torch import Tensor

from predkern import backends, reference
from predkern.ops import _checks
from predkern.ops import _functorch, _triton_eager
from predkern.ops._tensors import as3, empty

OP = "decoupling_loss"


def decoupling_loss(delta_c: Tensor, delta_m: Tensor) -> Tensor:
    """Mean over (n, c) of |cosine| between the spatial vectors of delta_c and delta_m, fused.

    delta_c, delta_m: (N, C, *spatial), already adapter-projected; N may stack the deltas of
    several layers and steps (all terms then weigh the same, as the official mean of means when
    every term has the same N). Equals, value and gradients, the official PredRNN-V2 expression
    ``mean(abs(cosine_similarity(F.normalize(a, dim=2), F.normalize(b, dim=2), dim=2)))`` on the
    (N, C, S) views, zero rows included. Returns a 0-dim tensor of the inputs' dtype (NaN when
    N*C == 0, as a mean over nothing).
    """
    if not isinstance(delta_c, Tensor):
        _checks.tensor(OP, "delta_c", delta_c)
    backend = backends.select_for(delta_c)
    if backend != "reference" and _functorch.active():
        _check(delta_c, delta_m)
        return _FUNCTORCH[backend].apply(delta_c, delta_m, True)[0]
    if backend in ("cpu", "cuda"):  # the C++ op checks its arguments itself
        try:
            return _cpp_op(delta_c, delta_m)
        except (NotImplementedError, RuntimeError):  # e.g. a quantized tensor or a list: name the argument
            _check(delta_c, delta_m)
            raise
    _check(delta_c, delta_m)
    if backend == "reference":
        return reference.decoupling_loss(delta_c, delta_m)
    save = _triton_eager.saves(delta_c, delta_m)
    return _triton_eager.call(torch.ops.predkern.decoupling_loss_triton, _triton_function,
                              delta_c, delta_m, save)[0]


def _check(delta_c, delta_m) -> None:
    _checks.tensor(OP, "delta_c", delta_c)
    if delta_c.dim() < 2:
        raise ValueError(f"{OP}: `delta_c` must have shape (N, C, *spatial), got {delta_c.dim()} "
                         f"dims {list(delta_c.shape)}")
    _checks.tensor(OP, "delta_m", delta_m, delta_c)
    _checks.shape(OP, "delta_m", delta_m, delta_c.shape, "delta_c.shape")
    _checks.dtype(OP, "delta_m", delta_m, delta_c.dtype, "delta_c")


def _forward_outputs(delta_c, save):
    """The loss, and the (N*C, 4) float64 row coefficients of the backward (empty unless `save`)."""
    rows = delta_c.shape[0] * delta_c.shape[1] if save else 0
    return (torch.empty((), dtype=delta_c.dtype, device=delta_c.device),
            torch.empty((rows, 4), dtype=torch.float64, device=delta_c.device))


def _grads(delta_c):
    return empty(delta_c.shape, delta_c, delta_c.dtype), empty(delta_c.shape, delta_c, delta_c.dtype)


# Output shapes and layouts of the C++ ops, for torch.compile and opcheck. The fakes also run
# when a meta tensor is mixed with real ones, so they check the arguments as the kernels do.
if backends._extension_error() is None:
    _cpp_op = torch.ops.predkern.decoupling_loss.default

    @torch.library.register_fake("predkern::decoupling_loss")
    def _(delta_c, delta_m):
        _check(delta_c, delta_m)
        return _forward_outputs(delta_c, False)[0]

    @torch.library.register_fake("predkern::decoupling_loss_forward")
    def _(delta_c, delta_m):
        _check(delta_c, delta_m)
        return _forward_outputs(delta_c, True)

    @torch.library.register_fake("predkern::decoupling_loss_backward")
    def _(grad_loss, delta_c, delta_m, row_coefs):
        return _grads(delta_c)


# ---- triton backend: custom ops around the kernels in predkern/triton/decoupling_loss.py ----

def _triton_forward_impl(delta_c: Tensor, delta_m: Tensor, save: bool) -> tuple[Tensor, Tensor]:
    from predkern.triton import decoupling_loss as kernels

    loss, row_coefs = _forward_outputs(delta_c, save)
    kernels.forward(as3(delta_c), as3(delta_m), row_coefs if save else None, loss)
    return loss, row_coefs


_triton_forward = torch.library.custom_op("predkern::decoupling_loss_triton", mutates_args=())(
    _triton_forward_impl)


@_triton_forward.register_fake
def _(delta_c, delta_m, save):
    return _forward_outputs(delta_c, save)


def _triton_backward_impl(grad_loss: Tensor, delta_c: Tensor, delta_m: Tensor, row_coefs: Tensor
                          ) -> tuple[Tensor, Tensor]:
    from predkern.triton import decoupling_loss as kernels

    grad_c, grad_m = _grads(delta_c)
    if grad_c.numel():
        kernels.backward(grad_loss, as3(delta_c), as3(delta_m), row_coefs, as3(grad_c), as3(grad_m))
    return grad_c, grad_m


_triton_backward = torch.library.custom_op("predkern::decoupling_loss_triton_backward", mutates_args=())(
    _triton_backward_impl)


@_triton_backward.register_fake
def _(grad_loss, delta_c, delta_m, row_coefs):
    return _grads(delta_c)


def _setup_context(ctx, inputs, output):
    if not inputs[-1]:
        raise RuntimeError(f"{OP}: the triton forward ran without saving for backward; "
                           "call predkern.ops.decoupling_loss, which decides this")
    ctx.save_for_backward(inputs[0], inputs[1], output[1])
    ctx.set_materialize_grads(False)  # row_coefs (internal) never gets a gradient: no zeros for it


def _grad(ctx, grad_loss, _grad_row_coefs, *, backward=_triton_backward):
    if grad_loss is None:
        return None, None, None
    delta_c, delta_m, row_coefs = ctx.saved_tensors
    return (*backward(grad_loss.contiguous(), delta_c, delta_m, row_coefs), None)


_triton_forward.register_autograd(_grad, setup_context=_setup_context)
_triton_function = _triton_eager.function("_TritonDecouplingLoss", _triton_forward_impl, _triton_backward_impl,
                                          _setup_context, _grad, _triton_backward)
_FUNCTORCH = _functorch.functions(
    "DecouplingLoss", _setup_context, _grad, (_triton_forward, _triton_backward),
    None if backends._extension_error() else (torch.ops.predkern.decoupling_loss_forward,
                                              torch.ops.predkern.decoupling_loss_backward))
