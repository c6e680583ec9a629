"""stlstm_output: PredRNN ST-LSTM stage 2, the hidden state h' (SPEC.md section 2).

Backends: reference (predkern.reference), cpu / cuda (torch.ops.predkern.stlstm_output, C++
autograd, see csrc/stlstm_output.cpp) and triton (custom ops below, Python autograd;
in eager mode the same implementations through an autograd.Function, see _triton_eager.py).
Under torch.func transforms every backend's kernels run through _functorch.py.
"""
from __future__ import annotations

import torch
from torch import Tensor

from predkern import backends, reference
from predkern.ops import _checks
from predkern.ops import _functorch, _triton_eager
from predkern.ops._tensors import as3, empty, with_channels

OP = "stlstm_output"


def stlstm_output(x_cat: Tensor, h_cat: Tensor, o_conv: Tensor, last_conv: Tensor) -> Tensor:
    """PredRNN's ST-LSTM hidden state, fused: ``sigmoid(o_x + o_h + o_conv) * tanh(last_conv)``.

    o_x and o_h are the o blocks of x_cat (B, 7C, ...) and h_cat (B, 4C, ...), read where they lie
    (no slice copies). o_conv = conv_o(mem) and last_conv = conv_last(mem) are (B, C, ...); they
    may be the two halves of one (B, 2C, ...) conv output.
    """
    if not isinstance(x_cat, Tensor):
        _checks.tensor(OP, "x_cat", x_cat)
    backend = backends.select_for(x_cat)
    if backend != "reference" and _functorch.active():
        _check(x_cat, h_cat, o_conv, last_conv)
        return _FUNCTORCH[backend].apply(x_cat, h_cat, o_conv, last_conv, True)[0]
    if backend in ("cpu", "cuda"):  # the C++ op checks its arguments itself
        try:
            return _cpp_op(x_cat, h_cat, o_conv, last_conv)
        except (NotImplementedError, RuntimeError):  # e.g. a quantized tensor or a list: name the argument
            _check(x_cat, h_cat, o_conv, last_conv)
            raise
    _check(x_cat, h_cat, o_conv, last_conv)
    if backend == "reference":
        return reference.stlstm_output(x_cat, h_cat, o_conv, last_conv)
    save = _triton_eager.saves(x_cat, h_cat, o_conv, last_conv)
    return _triton_eager.call(torch.ops.predkern.stlstm_output_triton, _triton_function,
                              x_cat, h_cat, o_conv, last_conv, save)[0]


def _check(x_cat, h_cat, o_conv, last_conv) -> None:
    _checks.tensor(OP, "x_cat", x_cat)
    C = _checks.stacked(OP, "x_cat", x_cat, 7, "blocks (i, f, g, i', f', g', o)")
    _checks.tensor(OP, "h_cat", h_cat, x_cat)
    _checks.shape(OP, "h_cat", h_cat, with_channels(x_cat, 4 * C), "(B, 4*C, *spatial)")
    _checks.dtype(OP, "h_cat", h_cat, x_cat.dtype, "x_cat")
    for name, t in (("o_conv", o_conv), ("last_conv", last_conv)):
        _checks.tensor(OP, name, t, x_cat)
        _checks.shape(OP, name, t, with_channels(x_cat, C), "(B, C, *spatial) with C = x_cat.size(1) / 7")
        _checks.dtype(OP, name, t, x_cat.dtype, "x_cat")


def _grads(o_gate):
    C = o_gate.shape[1]
    return (empty(with_channels(o_gate, 7 * C), o_gate, o_gate.dtype),
            empty(with_channels(o_gate, 4 * C), o_gate, o_gate.dtype),
            empty(o_gate.shape, o_gate, o_gate.dtype), empty(o_gate.shape, o_gate, o_gate.dtype))


# Output shapes and layouts of the C++ ops, for torch.compile and opcheck. The fakes also run
# when a meta tensor is mixed with real ones, so they check the arguments as the kernels do.
if backends._extension_error() is None:
    _cpp_op = torch.ops.predkern.stlstm_output.default

    @torch.library.register_fake("predkern::stlstm_output")
    def _(x_cat, h_cat, o_conv, last_conv):
        _check(x_cat, h_cat, o_conv, last_conv)
        return empty(o_conv.shape, x_cat, x_cat.dtype)

    @torch.library.register_fake("predkern::stlstm_output_forward")
    def _(x_cat, h_cat, o_conv, last_conv):
        _check(x_cat, h_cat, o_conv, last_conv)
        return tuple(empty(o_conv.shape, x_cat, x_cat.dtype) for _ in range(3))

    @torch.library.register_fake("predkern::stlstm_output_backward")
    def _(grad_h, o_gate, tanh_last):
        return _grads(o_gate)


# ---- triton backend: custom ops around the kernels in predkern/triton/stlstm_output.py ----

def _triton_forward_impl(x_cat: Tensor, h_cat: Tensor, o_conv: Tensor, last_conv: Tensor,
                         save: bool) -> tuple[Tensor, Tensor, Tensor]:
    from predkern.triton import stlstm_output as kernels

    h_new, o_gate, tanh_last = _forward_outputs(x_cat, o_conv, save)
    if h_new.numel():
        kernels.forward(as3(x_cat), as3(h_cat), as3(o_conv), as3(last_conv), as3(h_new),
                        as3(o_gate) if save else None, as3(tanh_last) if save else None)
    return h_new, o_gate, tanh_last


_triton_forward = torch.library.custom_op("predkern::stlstm_output_triton", mutates_args=())(
    _triton_forward_impl)


def _forward_outputs(x_cat, o_conv, save):
    """h_new, and what backward needs (empty unless `save`): o_gate and tanh(last_conv)."""
    saved_shape = o_conv.shape if save else (0,) * o_conv.dim()
    return (empty(o_conv.shape, x_cat, x_cat.dtype), empty(saved_shape, x_cat, x_cat.dtype),
            empty(saved_shape, x_cat, x_cat.dtype))


@_triton_forward.register_fake
def _(x_cat, h_cat, o_conv, last_conv, save):
    return _forward_outputs(x_cat, o_conv, save)


def _triton_backward_impl(grad_h: Tensor, o_gate: Tensor, tanh_last: Tensor
                          ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from predkern.triton import stlstm_output as kernels

    grads = _grads(o_gate)
    if o_gate.numel():
        kernels.backward(as3(grad_h), as3(o_gate), as3(tanh_last), *(as3(g) for g in grads))
    return grads


_triton_backward = torch.library.custom_op("predkern::stlstm_output_triton_backward", mutates_args=())(
    _triton_backward_impl)


@_triton_backward.register_fake
def _(grad_h, o_gate, tanh_last):
    return _grads(o_gate)


def _setup_context(ctx, inputs, output):
    # outputs without a gradient stay None: their paths are skipped, not multiplied by zero
    ctx.set_materialize_grads(False)
    if not inputs[-1]:
        raise RuntimeError(f"{OP}: the triton forward ran without saving for backward; "
                           "call predkern.ops.stlstm_output, which decides this")
    ctx.save_for_backward(output[1], output[2])


def _grad(ctx, grad_h, _grad_o_gate, _grad_tanh_last, *, backward=_triton_backward):
    o_gate, tanh_last = ctx.saved_tensors
    if grad_h is None:
        return (None,) * 5
    return (*backward(grad_h, o_gate, tanh_last), None)


_triton_forward.register_autograd(_grad, setup_context=_setup_context)
_triton_function = _triton_eager.function("_TritonSTLSTMOutput", _triton_forward_impl, _triton_backward_impl,
                                          _setup_context, _grad, _triton_backward)
_FUNCTORCH = _functorch.functions(
    "STLSTMOutput", _setup_context, _grad, (_triton_forward, _triton_backward),
    None if backends._extension_error() else (torch.ops.predkern.stlstm_output_forward,
                                              torch.ops.predkern.stlstm_output_backward))
