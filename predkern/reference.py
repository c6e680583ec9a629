"""Pure-PyTorch reference implementations of every predkern op.

They are the fallback where no fused backend exists, the oracle the tests compare against, and the
eager baseline of the benchmarks. This module imports nothing from predkern (see DESIGN.md).
"""
from __future__ import annotations

import itertools

import torch

GATE_ORDERS = tuple("".join(p) for p in itertools.permutations("ifgo"))
GATE_ACTS = ("sigmoid", "hard_sigmoid")


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras' hard sigmoid, clamp(0.2 x + 0.5, 0, 1) (not torch's hardsigmoid, whose slope is 1/6)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


def _act(name: str):
    return torch.sigmoid if name == "sigmoid" else hard_sigmoid


def _spatial_view(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape a per-channel (k*C,) vector so it broadcasts over (B, k*C, *S)."""
    return t.reshape((1, -1) + (1,) * (ndim - 2))


def convlstm_gates(gates_x, c, gates_h=None, bias=None, peephole=None, *,
                   forget_bias=0.0, gate_order="ifgo", gate_act="sigmoid"):
    """ConvLSTM cell step after its convolutions (SPEC.md section 1), written as eager PyTorch."""
    z = gates_x if gates_h is None else gates_x + gates_h
    if bias is not None:
        z = z + _spatial_view(bias, z.dim())
    blocks = dict(zip(gate_order, torch.chunk(z, 4, dim=1)))
    act = _act(gate_act)
    z_i, z_f, z_o = blocks["i"], blocks["f"], blocks["o"]
    if peephole is not None:
        w_ci, w_cf, w_co = peephole.unbind(0)
        z_i = z_i + w_ci * c
        z_f = z_f + w_cf * c
    i = act(z_i)
    f = act(z_f + forget_bias)
    g = torch.tanh(blocks["g"])
    c_new = f * c + i * g
    if peephole is not None:
        z_o = z_o + w_co * c_new
    o = act(z_o)
    # Under autocast c is float32 while the gates are half: h takes the gates' dtype (SPEC 5).
    h_new = (o * torch.tanh(c_new)).to(gates_x.dtype)
    return h_new, c_new
