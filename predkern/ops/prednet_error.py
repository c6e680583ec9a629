"""prednet_error: PredNet's error units (SPEC.md section 4).

Backends: reference (predkern.reference), cpu / cuda (torch.ops.predkern.prednet_error, C++
autograd, see csrc/prednet_error.cpp) and triton (custom ops below, Python autograd;
in eager mode the same implementations through an autograd.Function, see _triton_eager.py). The
backward recomputes the activated prediction from the saved inputs a and a_hat: nothing else
is saved (eager autograd keeps relu(a_hat) and both halves of e). Under torch.func transforms
every backend's kernels run through _functorch.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from predkern import backends, reference
from predkern.ops import _checks
from predkern.ops import _functorch, _triton_eager
from predkern.ops._tensors import as3, empty, with_channels

OP = "prednet_error"
FIRSTS = ("pred", "target")


def prednet_error(a: Tensor, a_hat: Tensor, *, relu_a_hat: bool = True, clip_max: Optional[float] = None,
                  first: str = "pred", return_mean: bool = False):
    """PredNet error units, fused: returns ``(e, a_hat_out)`` or ``(e, a_hat_out, e_mean)``.

    a: (N, C, *spatial) the target; a_hat: the prediction before its activation. a_hat_out =
    min(relu(a_hat), clip_max) (each step optional); e (N, 2C, ...) = [relu(a_hat_out - a),
    relu(a - a_hat_out)] with ``first="pred"`` (coxlab order) or the two halves swapped with
    ``first="target"``; e_mean (N,) the mean of e over its non-batch elements (the Keras layer
    error), computed in the same pass when ``return_mean``. Outputs follow a's memory format.
    """
    if not isinstance(a, Tensor):
        _checks.tensor(OP, "a", a)
    opts = _options(relu_a_hat, clip_max, first, return_mean)
    backend = backends.select_for(a)
    if backend != "reference" and _functorch.active():
        _check(a, a_hat)
        e, a_hat_out, e_mean = _FUNCTORCH[backend].apply(a, a_hat, *opts, True)
    elif backend in ("cpu", "cuda"):  # the C++ op checks its tensors itself
        try:
            e, a_hat_out, e_mean = _cpp_op(a, a_hat, *opts)
        except (NotImplementedError, RuntimeError):  # e.g. a quantized tensor or a list: name the argument
            _check(a, a_hat)
            raise
    else:
        _check(a, a_hat)
        if backend == "reference":
            return reference.prednet_error(a, a_hat, relu_a_hat=opts[0], clip_max=opts[1],
                                           first=opts[2], return_mean=opts[3])
        save = _triton_eager.saves(a, a_hat)
        e, a_hat_out, e_mean = _triton_eager.call(torch.ops.predkern.prednet_error_triton, _triton_function,
                                                  a, a_hat, *opts, save)
    return (e, a_hat_out, e_mean) if return_mean else (e, a_hat_out)


def _options(relu_a_hat, clip_max, first, return_mean):
    for name, v in (("relu_a_hat", relu_a_hat), ("return_mean", return_mean)):
        if not isinstance(v, bool):
            raise TypeError(f"{OP}: `{name}` must be a bool, got {type(v).__name__}")
    clip_max = _checks.real(OP, "clip_max", clip_max, none_ok=True)
    _checks.choice(OP, "first", first, FIRSTS)
    return relu_a_hat, clip_max, first, return_mean


def _check(a, a_hat) -> None:
    _checks.tensor(OP, "a", a)
    if a.dim() < 2:
        raise ValueError(f"{OP}: `a` must have shape (N, C, *spatial), got {a.dim()} dims {list(a.shape)}")
    _checks.tensor(OP, "a_hat", a_hat, a)
    _checks.shape(OP, "a_hat", a_hat, a.shape, "a.shape")
    _checks.dtype(OP, "a_hat", a_hat, a.dtype, "a")


def _outputs(a, return_mean):
    e_mean = (torch.empty((a.shape[0],) if return_mean else (0,), dtype=a.dtype, device=a.device))
    return empty(with_channels(a, 2 * a.shape[1]), a, a.dtype), empty(a.shape, a, a.dtype), e_mean


def _grads(a):
    return empty(a.shape, a, a.dtype), empty(a.shape, a, a.dtype)


# Output shapes and layouts of the C++ ops, for torch.compile and opcheck. The fakes also run
# when a meta tensor is mixed with real ones, so they check the arguments as the kernels do.
if backends._extension_error() is None:
    _cpp_op = torch.ops.predkern.prednet_error.default

    @torch.library.register_fake("predkern::prednet_error")
    def _(a, a_hat, relu_a_hat=True, clip_max=None, first="pred", return_mean=False):
        _check(a, a_hat)
        _checks.choice(OP, "first", first, FIRSTS)
        return _outputs(a, return_mean)

    @torch.library.register_fake("predkern::prednet_error_backward")
    def _(grad_e, grad_a_hat_out, grad_e_mean, a, a_hat, relu_a_hat, clip_max, first):
        return _grads(a)


# ---- triton backend: custom ops around the kernels in predkern/triton/prednet_error.py ----

def _triton_forward_impl(a: Tensor, a_hat: Tensor, relu_a_hat: bool, clip_max: Optional[float], first: str,
                         return_mean: bool, save: bool) -> tuple[Tensor, Tensor, Tensor]:
    from predkern.triton import prednet_error as kernels

    e, a_hat_out, e_mean = _outputs(a, return_mean)
    kernels.forward(as3(a), as3(a_hat), as3(e), as3(a_hat_out), e_mean if return_mean else None,
                    relu_a_hat, clip_max, first == "target")
    return e, a_hat_out, e_mean


_triton_forward = torch.library.custom_op("predkern::prednet_error_triton", mutates_args=())(
    _triton_forward_impl)


@_triton_forward.register_fake
def _(a, a_hat, relu_a_hat, clip_max, first, return_mean, save):
    return _outputs(a, return_mean)


def _triton_backward_impl(grad_e: Optional[Tensor], grad_a_hat_out: Optional[Tensor], grad_e_mean: Optional[Tensor],
                          a: Tensor, a_hat: Tensor, relu_a_hat: bool, clip_max: Optional[float], first: str
                          ) -> tuple[Tensor, Tensor]:
    from predkern.triton import prednet_error as kernels

    grad_a, grad_a_hat = _grads(a)
    if grad_a.numel():
        kernels.backward(as3(grad_e), as3(grad_a_hat_out), grad_e_mean, as3(a), as3(a_hat),
                         as3(grad_a), as3(grad_a_hat), relu_a_hat, clip_max, first == "target")
    return grad_a, grad_a_hat


_triton_backward = torch.library.custom_op("predkern::prednet_error_triton_backward", mutates_args=())(
    _triton_backward_impl)


@_triton_backward.register_fake
def _(grad_e, grad_a_hat_out, grad_e_mean, a, a_hat, relu_a_hat, clip_max, first):
    return _grads(a)


def _setup_context(ctx, inputs, output):
    # outputs without a gradient stay None: their paths are skipped, not multiplied by zero
    ctx.set_materialize_grads(False)
    a, a_hat, relu_a_hat, clip_max, first, return_mean, save = inputs
    if not save:
        raise RuntimeError(f"{OP}: the triton forward ran without saving for backward; "
                           "call predkern.ops.prednet_error, which decides this")
    ctx.save_for_backward(a, a_hat)
    ctx.opts = (relu_a_hat, clip_max, first, return_mean)


def _grad(ctx, grad_e, grad_a_hat_out, grad_e_mean, *, backward=_triton_backward):
    a, a_hat = ctx.saved_tensors
    relu_a_hat, clip_max, first, return_mean = ctx.opts
    if not return_mean:
        grad_e_mean = None
    if grad_e is None and grad_a_hat_out is None and grad_e_mean is None:
        return (None,) * 7
    if grad_e_mean is not None:
        grad_e_mean = grad_e_mean.contiguous()
    return (*backward(grad_e, grad_a_hat_out, grad_e_mean, a, a_hat, relu_a_hat, clip_max, first),
            None, None, None, None, None)


_triton_forward.register_autograd(_grad, setup_context=_setup_context)
_triton_function = _triton_eager.function("_TritonPredNetError", _triton_forward_impl, _triton_backward_impl,
                                          _setup_context, _grad, _triton_backward)


_FUNCTORCH = _functorch.functions(
    "PredNetError", _setup_context, _grad, (_triton_forward, _triton_backward),
    # the C++ op below autograd is its forward kernel (no separate forward op: the backward recomputes)
    None if backends._extension_error() else (torch.ops.predkern.prednet_error,
                                              torch.ops.predkern.prednet_error_backward))
