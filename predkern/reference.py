"""Pure-PyTorch reference implementations of every predkern op.

They are the fallback where no fused backend exists, the oracle the tests compare against, and the
eager baseline of the benchmarks. This module imports nothing from predkern (see DESIGN.md).
"""
from __future__ import annotations

import itertools
import math

import torch
from torch._prims_common import suggest_memory_format

GATE_ORDERS = tuple("".join(p) for p in itertools.permutations("ifgo"))
GATE_ACTS = ("sigmoid", "hard_sigmoid")


def memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout of outputs made like `t` (the C++ kernels' too): suggest_memory_format(t), also
    under torch.jit.trace, whose sizes are traced tensors that
    suggest_memory_format cannot compare (the trace is specialized on the layout anyway)."""
    state = torch._C._get_tracing_state()
    if state is None:
        return suggest_memory_format(t)
    torch._C._set_tracing_state(None)
    try:
        return suggest_memory_format(t)
    finally:
        torch._C._set_tracing_state(state)


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


def stlstm_memory(x_cat, h_cat, m_cat, c, m, *, forget_bias=1.0, return_deltas=True):
    """PredRNN ST-LSTM stage 1 (SPEC.md section 2): the memories c', m' side by side in `mem`.

    x_cat (B, 7C, ...) holds blocks i, f, g, i', f', g', o; h_cat (B, 4C, ...) i, f, g, o;
    m_cat (B, 3C, ...) i', f', g'. Returns (mem (B, 2C, ...), delta_c, delta_m) (deltas None
    unless return_deltas)."""
    x_i, x_f, x_g, x_im, x_fm, x_gm, _ = torch.chunk(x_cat, 7, dim=1)
    h_i, h_f, h_g, _ = torch.chunk(h_cat, 4, dim=1)
    m_i, m_f, m_g = torch.chunk(m_cat, 3, dim=1)
    i = torch.sigmoid(x_i + h_i)
    f = torch.sigmoid(x_f + h_f + forget_bias)
    g = torch.tanh(x_g + h_g)
    delta_c = i * g
    c_new = f * c + delta_c
    i_m = torch.sigmoid(x_im + m_i)
    f_m = torch.sigmoid(x_fm + m_f + forget_bias)
    g_m = torch.tanh(x_gm + m_g)
    delta_m = i_m * g_m
    m_new = f_m * m + delta_m
    mem = torch.cat([c_new, m_new], dim=1)
    if not return_deltas:
        return mem, None, None
    return mem, delta_c, delta_m


def stlstm_output(x_cat, h_cat, o_conv, last_conv):
    """PredRNN ST-LSTM stage 2 (SPEC.md section 2): h' = sigmoid(o_x + o_h + o_conv) * tanh(last_conv),
    with o_x the last block of x_cat (B, 7C, ...) and o_h the last block of h_cat (B, 4C, ...)."""
    C = x_cat.shape[1] // 7
    o = torch.sigmoid(x_cat[:, 6 * C:] + h_cat[:, 3 * C:] + o_conv)
    return o * torch.tanh(last_conv)


def decoupling_loss(delta_c, delta_m):
    """PredRNN-V2 memory decoupling loss (SPEC.md section 3), the official expression verbatim:
    mean over (n, c) of |cosine_similarity(F.normalize(delta_c), F.normalize(delta_m))| over space."""
    N, C, S = delta_c.shape[0], delta_c.shape[1], math.prod(delta_c.shape[2:])
    a = torch.nn.functional.normalize(delta_c.reshape(N, C, S), dim=2)
    b = torch.nn.functional.normalize(delta_m.reshape(N, C, S), dim=2)
    return torch.mean(torch.abs(torch.cosine_similarity(a, b, dim=2)))


def prednet_error(a, a_hat, *, relu_a_hat=True, clip_max=None, first="pred", return_mean=False):
    """PredNet error units (SPEC.md section 4): (e, a_hat_out[, e_mean])."""
    a_hat = a_hat.contiguous(memory_format=memory_format(a))  # outputs follow a's layout
    p = torch.relu(a_hat) if relu_a_hat else a_hat.clone()  # a_hat_out never aliases a_hat
    if clip_max is not None:
        p = torch.clamp(p, max=clip_max)
    pos, neg = torch.relu(p - a), torch.relu(a - p)
    e = torch.cat([pos, neg] if first == "pred" else [neg, pos], dim=1)
    if not return_mean:
        return e, p
    return e, p, e.flatten(1).mean(dim=1)
