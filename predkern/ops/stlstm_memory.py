"""stlstm_memory: PredRNN ST-LSTM stage 1, the two memories c' and m' (SPEC.md section 2).

Backends: reference (predkern.reference), cpu / cuda (torch.ops.predkern.stlstm_memory, C++
autograd, see csrc/stlstm_memory.cpp) and triton (custom ops below, Python autograd;
in eager mode the same implementations through an autograd.Function, see _triton_eager.py).
Under torch.func transforms every backend's kernels run through _functorch.py.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from predkern import backends, reference
from predkern.ops import _checks
from predkern.ops import _functorch, _triton_eager
from predkern.ops._tensors import as3, empty, with_channels

OP = "stlstm_memory"
X_BLOCKS = "blocks (i, f, g, i', f', g', o)"


def stlstm_memory(x_cat: Tensor, h_cat: Tensor, m_cat: Tensor, c: Tensor, m: Tensor, *,
                  forget_bias: float = 1.0, return_deltas: bool = True
                  ) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """PredRNN's ST-LSTM memories, fused: returns ``(mem, delta_c, delta_m)``.

    x_cat: (B, 7C, *spatial) conv_x output, blocks i, f, g, i', f', g', o; h_cat: (B, 4C, ...)
    conv_h output, blocks i, f, g, o; m_cat: (B, 3C, ...) conv_m output, blocks i', f', g';
    c, m: (B, C, ...) the temporal and spatiotemporal memories. ``mem`` (B, 2C, ...) holds c' and
    m' side by side (the input of conv_o / conv_last), written directly. ``delta_c = i*g`` and
    ``delta_m = i'*g'`` (PredRNN-V2's decoupling loss) are None unless ``return_deltas``.
    """
    if not isinstance(x_cat, Tensor):
        _checks.tensor(OP, "x_cat", x_cat)
    if not isinstance(return_deltas, bool):
        raise TypeError(f"{OP}: `return_deltas` must be a bool, got {type(return_deltas).__name__}")
    backend = backends.select_for(x_cat)
    if backend != "reference" and _functorch.active():
        _check(x_cat, h_cat, m_cat, c, m, forget_bias)
        mem, delta_c, delta_m, _ = _FUNCTORCH[backend].apply(x_cat, h_cat, m_cat, c, m, float(forget_bias),
                                                            return_deltas, True)
    elif backend in ("cpu", "cuda"):  # the C++ op checks its arguments itself
        try:
            mem, delta_c, delta_m = _cpp_op(x_cat, h_cat, m_cat, c, m, _float(forget_bias), return_deltas)
        except (NotImplementedError, RuntimeError):  # e.g. a quantized tensor or a list: name the argument
            _check(x_cat, h_cat, m_cat, c, m, forget_bias)
            raise
    else:
        _check(x_cat, h_cat, m_cat, c, m, forget_bias)
        if backend == "reference":
            return reference.stlstm_memory(x_cat, h_cat, m_cat, c, m, forget_bias=forget_bias,
                                           return_deltas=return_deltas)
        save = _triton_eager.saves(x_cat, h_cat, m_cat, c, m)
        mem, delta_c, delta_m, _ = _triton_eager.call(
            torch.ops.predkern.stlstm_memory_triton, _triton_function,
            x_cat, h_cat, m_cat, c, m, float(forget_bias), return_deltas, save)
    return (mem, delta_c, delta_m) if return_deltas else (mem, None, None)


def _float(value) -> float:
    return _checks.real(OP, "forget_bias", value)


def _check(x_cat, h_cat, m_cat, c, m, forget_bias) -> None:
    _checks.tensor(OP, "x_cat", x_cat)
    C = _checks.stacked(OP, "x_cat", x_cat, 7, X_BLOCKS)
    for name, t, k in (("h_cat", h_cat, 4), ("m_cat", m_cat, 3)):
        _checks.tensor(OP, name, t, x_cat)
        _checks.shape(OP, name, t, with_channels(x_cat, k * C), f"(B, {k}*C, *spatial)")
        _checks.dtype(OP, name, t, x_cat.dtype, "x_cat")
    for name, t in (("c", c), ("m", m)):
        _checks.tensor(OP, name, t, x_cat)
        _checks.shape(OP, name, t, with_channels(x_cat, C), "(B, C, *spatial) with C = x_cat.size(1) / 7")
    _checks.state_dtype(OP, "c", c, x_cat)
    _checks.dtype(OP, "m", m, c.dtype, "c")
    _float(forget_bias)


def _outputs(x_cat, c, return_deltas, save):
    C = x_cat.shape[1] // 7

    def delta():  # an empty placeholder when not asked for (a schema cannot return None)
        if return_deltas:
            return empty(with_channels(x_cat, C), x_cat, x_cat.dtype)
        return torch.empty((0,), dtype=x_cat.dtype, device=x_cat.device)

    # the gates saved for backward, in the gates' dtype as eager saves them (under autocast the
    # float32 state would double their bytes, the bulk of what a step saves)
    gates = (empty(with_channels(x_cat, 6 * C), x_cat, x_cat.dtype) if save
             else torch.empty((0,), dtype=x_cat.dtype, device=x_cat.device))
    return empty(with_channels(x_cat, 2 * C), x_cat, c.dtype), delta(), delta(), gates


def _grads(gates, c, gate_dtype):
    C = gates.shape[1] // 6
    return (empty(with_channels(gates, 7 * C), gates, gate_dtype),
            empty(with_channels(gates, 4 * C), gates, gate_dtype),
            empty(with_channels(gates, 3 * C), gates, gate_dtype),
            empty(c.shape, gates, c.dtype), empty(c.shape, gates, c.dtype))


# Output shapes and layouts of the C++ ops, for torch.compile and opcheck. The fakes also run
# when a meta tensor is mixed with real ones, so they check the arguments as the kernels do.
if backends._extension_error() is None:
    _cpp_op = torch.ops.predkern.stlstm_memory.default

    @torch.library.register_fake("predkern::stlstm_memory")
    def _(x_cat, h_cat, m_cat, c, m, forget_bias=1.0, return_deltas=True):
        _check(x_cat, h_cat, m_cat, c, m, forget_bias)
        return _outputs(x_cat, c, return_deltas, save=False)[:3]

    @torch.library.register_fake("predkern::stlstm_memory_forward")
    def _(x_cat, h_cat, m_cat, c, m, forget_bias, return_deltas):
        _check(x_cat, h_cat, m_cat, c, m, forget_bias)
        return _outputs(x_cat, c, return_deltas, save=True)

    @torch.library.register_fake("predkern::stlstm_memory_backward")
    def _(grad_mem, grad_delta_c, grad_delta_m, gates, c, m, gate_dtype):
        return _grads(gates, c, gate_dtype)


# ---- triton backend: custom ops around the kernels in predkern/triton/stlstm_memory.py ----

def _triton_forward_impl(x_cat: Tensor, h_cat: Tensor, m_cat: Tensor, c: Tensor, m: Tensor,
                         forget_bias: float, return_deltas: bool, save_gates: bool
                         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from predkern.triton import stlstm_memory as kernels

    mem, delta_c, delta_m, gates = _outputs(x_cat, c, return_deltas, save_gates)
    if mem.numel():
        kernels.forward(as3(x_cat), as3(h_cat), as3(m_cat), as3(c), as3(m), as3(mem),
                        as3(delta_c) if return_deltas else None, as3(delta_m) if return_deltas else None,
                        as3(gates) if save_gates else None, forget_bias=forget_bias)
    return mem, delta_c, delta_m, gates


_triton_forward = torch.library.custom_op("predkern::stlstm_memory_triton", mutates_args=())(
    _triton_forward_impl)


@_triton_forward.register_fake
def _(x_cat, h_cat, m_cat, c, m, forget_bias, return_deltas, save_gates):
    return _outputs(x_cat, c, return_deltas, save_gates)


def _triton_backward_impl(grad_mem: Optional[Tensor], grad_delta_c: Optional[Tensor],
                          grad_delta_m: Optional[Tensor], gates: Tensor, c: Tensor, m: Tensor,
                          gate_dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    from predkern.triton import stlstm_memory as kernels

    grads = _grads(gates, c, gate_dtype)
    if c.numel():
        kernels.backward(as3(grad_mem), as3(grad_delta_c), as3(grad_delta_m), as3(gates), as3(c), as3(m),
                         *(as3(g) for g in grads))
    return grads


_triton_backward = torch.library.custom_op("predkern::stlstm_memory_triton_backward", mutates_args=())(
    _triton_backward_impl)


@_triton_backward.register_fake
def _(grad_mem, grad_delta_c, grad_delta_m, gates, c, m, gate_dtype):
    return _grads(gates, c, gate_dtype)


def _setup_context(ctx, inputs, output):
    # outputs without a gradient stay None: their paths are skipped, not multiplied by zero
    ctx.set_materialize_grads(False)
    x_cat, h_cat, m_cat, c, m, forget_bias, return_deltas, save_gates = inputs
    if not save_gates:
        raise RuntimeError(f"{OP}: the triton forward ran without saving for backward; "
                           "call predkern.ops.stlstm_memory, which decides this")
    ctx.save_for_backward(output[3], c, m)
    ctx.gate_dtype, ctx.return_deltas = x_cat.dtype, return_deltas


def _grad(ctx, grad_mem, grad_delta_c, grad_delta_m, _grad_gates, *, backward=_triton_backward):
    gates, c, m = ctx.saved_tensors
    if not ctx.return_deltas:
        grad_delta_c = grad_delta_m = None
    if grad_mem is None and grad_delta_c is None and grad_delta_m is None:
        return (None,) * 8
    grads = backward(grad_mem, grad_delta_c, grad_delta_m, gates, c, m, ctx.gate_dtype)
    return (*grads, None, None, None)


_triton_forward.register_autograd(_grad, setup_context=_setup_context)
_triton_function = _triton_eager.function("_TritonSTLSTMMemory", _triton_forward_impl, _triton_backward_impl,
                                          _setup_context, _grad, _triton_backward)
_FUNCTORCH = _functorch.functions(
    "STLSTMMemory", _setup_context, _grad, (_triton_forward, _triton_backward),
    None if backends._extension_error() else (torch.ops.predkern.stlstm_memory_forward,
                                              torch.ops.predkern.stlstm_memory_backward))
