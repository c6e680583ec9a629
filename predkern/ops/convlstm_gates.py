"""convlstm_gates: the ConvLSTM cell step after its convolutions (SPEC.md section 1).

Backends: reference (predkern.reference), cpu / cuda (torch.ops.predkern.convlstm_gates, C++
autograd, see csrc/convlstm_gates.cpp) and triton (custom ops below, Python autograd;
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
from predkern.ops._tensors import as3 as _as3
from predkern.ops._tensors import compute_dtype
from predkern.ops._tensors import empty as _empty
from predkern.ops._tensors import with_channels

OP = "convlstm_gates"


def convlstm_gates(gates_x: Tensor, c: Tensor, gates_h: Optional[Tensor] = None,
                   bias: Optional[Tensor] = None, peephole: Optional[Tensor] = None, *,
                   forget_bias: float = 0.0, gate_order: str = "ifgo",
                   gate_act: str = "sigmoid") -> tuple[Tensor, Tensor]:
    """One ConvLSTM cell step after its convolutions, fused: returns ``(h_new, c_new)``.

    gates_x: (B, 4C, *spatial) gate pre-activations of the input conv; gates_h: the same from the
    hidden conv (optional, added inside the kernel); c: (B, C, *spatial) cell state; bias: (4C,);
    peephole: (3, C, *spatial) Hadamard peepholes W_ci, W_cf, W_co. ``gate_order`` is how the four
    blocks are stacked (any permutation of "ifgo"); ``gate_act`` is "sigmoid" or Keras'
    "hard_sigmoid" for i, f, o. Gradients flow to every tensor input.
    """
    if not isinstance(gates_x, Tensor):
        _checks.tensor(OP, "gates_x", gates_x)
    backend = backends.select_for(gates_x)
    if backend != "reference" and _functorch.active():
        _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act)
        h_new, c_new, _ = _FUNCTORCH[backend].apply(gates_x, c, gates_h, bias, peephole, float(forget_bias),
                                                   gate_order, gate_act, True)
        return h_new, c_new
    if backend in ("cpu", "cuda"):
        # The C++ op checks the rest itself, with the same messages: a second check in Python
        # would cost as much as the fused kernel at small sizes.
        try:
            return _cpp_op(gates_x, c, gates_h, bias, peephole, _float(forget_bias), gate_order, gate_act)
        except (NotImplementedError, RuntimeError):  # e.g. a quantized tensor or a list: name the argument
            _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act)
            raise
    _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act)
    if backend == "reference":
        return reference.convlstm_gates(gates_x, c, gates_h, bias, peephole, forget_bias=forget_bias,
                                        gate_order=gate_order, gate_act=gate_act)
    if backend == "triton":
        save = _triton_eager.saves(gates_x, c, gates_h, bias, peephole)
        h_new, c_new, _ = _triton_eager.call(
            torch.ops.predkern.convlstm_gates_triton, _triton_function,
            gates_x, c, gates_h, bias, peephole, float(forget_bias), gate_order, gate_act, save)
        return h_new, c_new
    raise AssertionError(f"unknown backend {backend}")


def _float(forget_bias) -> float:
    return _checks.real(OP, "forget_bias", forget_bias)


def _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act) -> None:
    _checks.tensor(OP, "gates_x", gates_x)
    if gates_x.dim() < 2:
        raise ValueError(f"{OP}: `gates_x` must have shape (B, 4*C, *spatial), "
                         f"got {gates_x.dim()} dims {list(gates_x.shape)}")
    if gates_x.shape[1] % 4:
        raise ValueError(f"{OP}: `gates_x`.size(1) must be a multiple of the 4 gates, got {gates_x.shape[1]}")
    state_shape = (gates_x.shape[0], gates_x.shape[1] // 4, *gates_x.shape[2:])
    _checks.tensor(OP, "c", c, gates_x)
    _checks.shape(OP, "c", c, state_shape, "(B, C, *spatial) with C = gates_x.size(1) / 4")
    _checks.state_dtype(OP, "c", c, gates_x)
    if gates_h is not None:
        _checks.tensor(OP, "gates_h", gates_h, gates_x)
        _checks.shape(OP, "gates_h", gates_h, gates_x.shape, "gates_x.shape")
        _checks.dtype(OP, "gates_h", gates_h, gates_x.dtype, "gates_x")
    if bias is not None:
        _checks.tensor(OP, "bias", bias, gates_x)
        _checks.shape(OP, "bias", bias, (gates_x.shape[1],), "(4*C,)")
        _checks.dtype(OP, "bias", bias, c.dtype, "c")
    if peephole is not None:
        _checks.tensor(OP, "peephole", peephole, gates_x)
        _checks.shape(OP, "peephole", peephole, (3, *state_shape[1:]), "(3, C, *spatial)")
        _checks.dtype(OP, "peephole", peephole, c.dtype, "c")
    _float(forget_bias)
    _checks.choice(OP, "gate_order", gate_order, reference.GATE_ORDERS,
                   "a permutation of 'ifgo' (e.g. 'ifgo', 'ifog', 'igfo')")
    _checks.choice(OP, "gate_act", gate_act, reference.GATE_ACTS, "'sigmoid' or 'hard_sigmoid'")


def _slot_blocks(gate_order: str) -> tuple[int, int, int, int]:
    """slot_block[k]: the block of gates_x that holds gate k of 'ifgo'."""
    return tuple(gate_order.index(g) for g in "ifgo")


def _param_grads(grad_gates: Tensor, c: Tensor, c_new: Optional[Tensor], peephole: Optional[Tensor],
                 has_bias: bool, gate_order: str, has_grad_h: bool):
    """Gradients of bias (summed over batch and space) and peephole (summed over batch). Without
    a gradient on h, W_co's is zero: eager never runs o's path (a 0 * c_new would turn an inf or
    NaN in c_new into NaN)."""
    grad_bias = grad_peephole = None
    if has_bias:
        grad_bias = grad_gates.sum([0, *range(2, grad_gates.dim())], dtype=c.dtype)
    if peephole is not None:
        # products and sums in the compute dtype, rounded once (a half product rounded before
        # the sum over batch adds its error to terms that may cancel)
        up = lambda t: t.to(torch.promote_types(t.dtype, torch.float32))  # noqa: E731
        dz = grad_gates.chunk(4, dim=1)
        i, f, _, o = _slot_blocks(gate_order)
        d_co = (up(dz[o]) * up(c_new)).sum(0) if has_grad_h else torch.zeros_like(peephole[2])
        grad_peephole = torch.stack([(up(dz[i]) * up(c)).sum(0), (up(dz[f]) * up(c)).sum(0),
                                     d_co]).to(peephole.dtype)
    return grad_bias, grad_peephole


def saved_gates_dtype(gate_dtype: torch.dtype, gate_act: str, peephole) -> torch.dtype:
    """The dtype of the gates saved for backward, as csrc/convlstm_gates.cpp's saved_gates_dtype:
    the gates' own, as eager keeps its activations (under autocast a float32 copy would double
    what a step saves), but the compute dtype with hard_sigmoid (an argument rounded to a half
    could cross a kink) or peepholes (their gradient's batch sums of products)."""
    return gate_dtype if gate_act == "sigmoid" and peephole is None else compute_dtype(gate_dtype)


# Output shapes and layouts of the C++ ops, for torch.compile and opcheck. The fakes also run
# when a meta tensor is mixed with real ones, so they check the arguments as the kernels do.
if backends._extension_error() is None:
    _cpp_op = torch.ops.predkern.convlstm_gates.default

    @torch.library.register_fake("predkern::convlstm_gates")
    def _(gates_x, c, gates_h=None, bias=None, peephole=None, forget_bias=0.0, gate_order="ifgo",
          gate_act="sigmoid"):
        _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act)
        shape = with_channels(gates_x, gates_x.shape[1] // 4)
        return _empty(shape, gates_x, gates_x.dtype), _empty(shape, gates_x, c.dtype)

    @torch.library.register_fake("predkern::convlstm_gates_forward")
    def _(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act):
        _check(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act)
        shape = with_channels(gates_x, gates_x.shape[1] // 4)
        return (_empty(shape, gates_x, gates_x.dtype), _empty(shape, gates_x, c.dtype),
                _empty(gates_x.shape, gates_x, saved_gates_dtype(gates_x.dtype, gate_act, peephole)))

    @torch.library.register_fake("predkern::convlstm_gates_backward")
    def _(grad_h, grad_c_new, saved_gates, c, peephole, gate_dtype, gate_order, gate_act):
        return _empty(saved_gates.shape, saved_gates, gate_dtype), _empty(c.shape, saved_gates, c.dtype)


# ---- triton backend: custom ops around the kernels in predkern/triton/convlstm_gates.py ----

def _triton_forward_impl(gates_x: Tensor, c: Tensor, gates_h: Optional[Tensor], bias: Optional[Tensor],
                         peephole: Optional[Tensor], forget_bias: float, gate_order: str, gate_act: str,
                         save_gates: bool) -> tuple[Tensor, Tensor, Tensor]:
    from predkern.triton import convlstm_gates as kernels

    shape = with_channels(gates_x, gates_x.shape[1] // 4)
    h_new, c_new = _empty(shape, gates_x, gates_x.dtype), _empty(shape, gates_x, c.dtype)
    saved_gates = _empty(gates_x.shape if save_gates else (0,) * gates_x.dim(), gates_x,
                         saved_gates_dtype(gates_x.dtype, gate_act, peephole))
    if h_new.numel():
        kernels.forward(_as3(gates_x), _as3(gates_h), _as3(c), bias, _as3(peephole), _as3(h_new),
                        _as3(c_new), _as3(saved_gates) if save_gates else None,
                        slot_block=_slot_blocks(gate_order), forget_bias=forget_bias,
                        hard_sigmoid=gate_act == "hard_sigmoid")
    return h_new, c_new, saved_gates


_triton_forward = torch.library.custom_op("predkern::convlstm_gates_triton", mutates_args=())(
    _triton_forward_impl)


@_triton_forward.register_fake
def _(gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act, save_gates):
    shape = with_channels(gates_x, gates_x.shape[1] // 4)
    pre_shape = gates_x.shape if save_gates else (0,) * gates_x.dim()
    return (_empty(shape, gates_x, gates_x.dtype), _empty(shape, gates_x, c.dtype),
            _empty(pre_shape, gates_x, saved_gates_dtype(gates_x.dtype, gate_act, peephole)))


def _triton_backward_impl(grad_h: Optional[Tensor], grad_c_new: Optional[Tensor], saved_gates: Tensor, c: Tensor,
                          peephole: Optional[Tensor], gate_dtype: torch.dtype, gate_order: str,
                          gate_act: str) -> tuple[Tensor, Tensor]:
    from predkern.triton import convlstm_gates as kernels

    grad_gates = _empty(saved_gates.shape, saved_gates, gate_dtype)
    grad_c = _empty(c.shape, saved_gates, c.dtype)
    if grad_c.numel():
        kernels.backward(_as3(grad_h), _as3(grad_c_new), _as3(saved_gates), _as3(c), _as3(peephole),
                         _as3(grad_gates), _as3(grad_c), slot_block=_slot_blocks(gate_order),
                         hard_sigmoid=gate_act == "hard_sigmoid")
    return grad_gates, grad_c


_triton_backward = torch.library.custom_op("predkern::convlstm_gates_triton_backward", mutates_args=())(
    _triton_backward_impl)


@_triton_backward.register_fake
def _(grad_h, grad_c_new, saved_gates, c, peephole, gate_dtype, gate_order, gate_act):
    return _empty(saved_gates.shape, saved_gates, gate_dtype), _empty(c.shape, saved_gates, c.dtype)


def _setup_context(ctx, inputs, output):
    # outputs without a gradient stay None: their paths are skipped, not multiplied by zero
    ctx.set_materialize_grads(False)
    gates_x, c, gates_h, bias, peephole, forget_bias, gate_order, gate_act, save_gates = inputs
    h_new, c_new, saved_gates = output
    if not save_gates:
        raise RuntimeError(f"{OP}: the triton forward ran without saving for backward; "
                           "call predkern.ops.convlstm_gates, which decides this")
    ctx.save_for_backward(saved_gates, c, peephole, c_new if peephole is not None else None)
    ctx.gate_dtype, ctx.gate_order, ctx.gate_act = gates_x.dtype, gate_order, gate_act
    ctx.has_gates_h, ctx.has_bias = gates_h is not None, bias is not None


def _grad(ctx, grad_h, grad_c_new, _grad_saved_gates, *, backward=_triton_backward):
    saved_gates, c, peephole, c_new = ctx.saved_tensors
    if grad_h is None and grad_c_new is None:
        return (None,) * 9
    grad_gates, grad_c = backward(grad_h, grad_c_new, saved_gates, c, peephole, ctx.gate_dtype,
                                  ctx.gate_order, ctx.gate_act)
    grad_bias, grad_peephole = _param_grads(grad_gates, c, c_new, peephole, ctx.has_bias, ctx.gate_order,
                                            grad_h is not None)
    return (grad_gates, grad_c, grad_gates if ctx.has_gates_h else None, grad_bias, grad_peephole,
            None, None, None, None)


_triton_forward.register_autograd(_grad, setup_context=_setup_context)
_triton_function = _triton_eager.function("_TritonConvLSTMGates", _triton_forward_impl, _triton_backward_impl,
                                          _setup_context, _grad, _triton_backward)
_FUNCTORCH = _functorch.functions(
    "ConvLSTMGates", _setup_context, _grad, (_triton_forward, _triton_backward),
    None if backends._extension_error() else (torch.ops.predkern.convlstm_gates_forward,
                                              torch.ops.predkern.convlstm_gates_backward))
