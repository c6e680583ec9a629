"""PredRNN's spatiotemporal LSTM cells (thuml/predrnn-pytorch, OpenSTL) on predkern's fused ops."""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.nn.functional as F
from torch import nn

from predkern import ops
from predkern.ops._tensors import empty, with_channels
from predkern.nn._signature import frame_and_conv


def _conv(cin, cout, k, stride, norm_shape):
    """nn.Sequential(conv[, LayerNorm]): the peers' module layout, hence their state_dict keys."""
    layers = [nn.Conv2d(cin, cout, kernel_size=k, stride=stride, padding=k // 2, bias=False)]
    if norm_shape is not None:
        layers.append(nn.LayerNorm(norm_shape))
    return nn.Sequential(*layers)


class SpatioTemporalLSTMCell(nn.Module):
    """PredRNN ST-LSTM cell, ``forward(x, h, c, m) -> (h, c, m)``.

    Takes OpenSTL's ``(in_channel, num_hidden, height, width, filter_size, stride, layer_norm)`` or
    thuml's ``(in_channel, num_hidden, width, filter_size, stride, layer_norm)``; parameters and
    state_dict keys are theirs (conv_x.0, conv_h.0, conv_m.0, conv_o.0, conv_last, and the
    LayerNorms conv_*.1 with layer_norm), so their checkpoints load with strict=True. Inside, the
    gate math runs as predkern's two fused stages; c and m are the two halves of one `mem` tensor
    (the input of conv_o and conv_last), so nothing is concatenated.
    """

    returns_deltas = False

    def __init__(self, in_channel, num_hidden, *args, **kwargs):
        super().__init__()
        height, width, k, stride, layer_norm = frame_and_conv(type(self).__name__, args, kwargs)
        C = num_hidden
        self.num_hidden = C
        self.padding = k // 2
        self._forget_bias = 1.0

        def norm(blocks):
            return [blocks * C, height, width] if layer_norm else None

        self.conv_x = _conv(in_channel, 7 * C, k, stride, norm(7))
        self.conv_h = _conv(C, 4 * C, k, stride, norm(4))
        self.conv_m = _conv(C, 3 * C, k, stride, norm(3))
        self.conv_o = _conv(2 * C, C, k, stride, norm(1))
        self.conv_last = nn.Conv2d(2 * C, C, kernel_size=1, stride=1, padding=0, bias=False)

    def forward(self, x_t, h_t, c_t, m_t):
        """h_t may be None for a zero hidden state (predkern's models pass it at their first
        step): conv_h is then skipped, see zero_state_conv."""
        return fused_stlstm_step(self, x_t, h_t, c_t, m_t, self.returns_deltas)


def fused_stlstm_step(cell: nn.Module, x_t, h_t, c_t, m_t, deltas: bool):
    """One ST-LSTM step of any module laid out as the peers' cell (conv_x, conv_h, conv_m, conv_o
    as Sequential(conv[, LayerNorm]), conv_last), on the two fused stages: this cell's forward,
    and the forward predkern.patch gives a peer's cell. h_t None is a zero hidden state.
    Returns (h, c, m[, delta_c, delta_m])."""
    x_cat, m_cat = cell.conv_x(x_t), cell.conv_m(m_t)
    h_cat = cell.conv_h(h_t) if h_t is not None else zero_state_conv(cell.conv_h, x_cat)
    mem, delta_c, delta_m = ops.stlstm_memory(x_cat, h_cat, m_cat, c_t, m_t,
                                              forget_bias=getattr(cell, "_forget_bias", 1.0), return_deltas=deltas)
    o_conv, last_conv = _conv_o_and_last(cell, mem)
    h_new = ops.stlstm_output(*_common_dtype(x_cat, h_cat, o_conv, last_conv))
    c_new, m_new = mem.chunk(2, dim=1)
    if deltas:
        return h_new, c_new, m_new, delta_c, delta_m
    return h_new, c_new, m_new


def zero_state_conv(conv_h: nn.Sequential, x_gates):
    """conv_h(zeros) without the conv, for a zero hidden state: a bias-free conv (as in every
    cell predkern builds or patches) of zeros is zeros, and a LayerNorm of zeros is its bias.
    A model's first step so skips a conv per layer, forward and backward (the weight's gradient
    from a zero input is zero). Shaped, typed and laid out as x_gates, conv_x's output, which
    conv_h's would match."""
    gates = empty(with_channels(x_gates, conv_h[0].out_channels), x_gates, x_gates.dtype).zero_()
    return conv_h[1:](gates) if len(conv_h) > 1 else gates


def _common_dtype(*gates):
    """The gates in one dtype, as eager's type promotion would combine them. They differ only
    under CUDA autocast with layer_norm: LayerNorm runs in float32 there, so x_cat, h_cat and
    o_conv come out float32 while conv_last, which has no LayerNorm, stays half."""
    if all(g.dtype == gates[0].dtype for g in gates[1:]):
        return gates
    dtype = functools.reduce(torch.promote_types, (g.dtype for g in gates))
    return tuple(g if g.dtype == dtype else g.to(dtype) for g in gates)


def _merges_convs(mem) -> bool:
    """Whether conv_o and conv_last run as one conv (see _conv_o_and_last): on a GPU."""
    return mem.is_cuda


def _conv_o_and_last(cell, mem):
    """conv_o(mem) and conv_last(mem). On a GPU, where a step at training sizes is bound by
    launches, they run as one conv: conv_last's 1x1 weight zero-padded to k x k beside
    conv_o's. On a CPU, bound by FLOPs, the padded weight would cost k*k times conv_last's
    work, so they stay two convs."""
    conv_o, conv_last = cell.conv_o[0], cell.conv_last
    k = conv_o.kernel_size[0]
    plain = dict(stride=(1, 1), dilation=(1, 1), groups=1, padding_mode="zeros")
    if _merges_convs(mem) and conv_o.kernel_size == (k, k) and conv_o.padding == (k // 2, k // 2) \
            and conv_last.kernel_size == (1, 1) and conv_last.padding == (0, 0) \
            and all(getattr(conv, name) == value for conv in (conv_o, conv_last) for name, value in plain.items()) \
            and conv_o.bias is None and conv_last.bias is None:
        o_conv, last_conv = F.conv2d(mem, _merged_weight(cell, mem), padding=k // 2).chunk(2, dim=1)
        if len(cell.conv_o) > 1:
            o_conv = cell.conv_o[1](o_conv)
        return o_conv, last_conv
    # under autocast, mem cast once for both convs (autocast would cast it for each, and each conv
    # would save its own copy for the backward)
    mem = mem.to(autocast_conv_dtype(mem))
    return cell.conv_o(mem), cell.conv_last(mem)


def autocast_conv_dtype(t):
    """The dtype autocast gives `t` as a conv's input: its lower-precision dtype where autocast
    is on for t's device (it leaves float64 alone), else t's own."""
    dtype = autocast_dtype(t.device.type)
    return t.dtype if dtype is None or t.dtype == torch.float64 else dtype


def autocast_dtype(device_type: str):
    """autocast's dtype where it is on for `device_type`, else None; None too for a device type
    autocast does not know (meta, where a model runs for its shapes or FLOP count), on which
    torch.is_autocast_enabled raises."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except RuntimeError:
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _merged_weight(cell, mem):
    """[conv_o.weight; conv_last.weight zero-padded to k x k], built once per sequence inside
    merged_weights_once (each step's own copy, saved by its conv for the backward, took 475 MiB
    in float32 at the Moving MNIST config), and in the autocast dtype where autocast is on (as
    autocast caches its cast of a leaf weight; this one is not a leaf)."""
    dtype = autocast_conv_dtype(cell.conv_o[0].weight)
    cache = cell.__dict__.get("_predkern_merged_weight")
    key = (dtype, torch.is_grad_enabled())
    if cache is not None and key in cache:
        return cache[key]
    weight = _build_merged_weight(cell, dtype)
    if cache is not None:
        cache[key] = weight
    return weight


def _build_merged_weight(cell, dtype):
    p = cell.conv_o[0].kernel_size[0] // 2
    weight = torch.cat([cell.conv_o[0].weight, F.pad(cell.conv_last.weight, (p, p, p, p))], dim=0)
    return weight.to(dtype)


@contextlib.contextmanager
def merged_weights_once(cells):
    """Within this block (one sequence of a model's forward), each of `cells` builds its merged
    conv_o/conv_last weight once instead of at every step. Not under torch.compile, whose graph
    computes the same expression once anyway."""
    if torch.compiler.is_compiling():
        yield
        return
    for cell in cells:
        cell.__dict__["_predkern_merged_weight"] = {}
    try:
        yield
    finally:
        for cell in cells:
            cell.__dict__.pop("_predkern_merged_weight", None)


class SpatioTemporalLSTMCellv2(SpatioTemporalLSTMCell):
    """PredRNN-V2 ST-LSTM cell, ``forward(x, h, c, m) -> (h, c, m, delta_c, delta_m)``: the
    increments i*g and i'*g' that the decoupling loss compares (before the model's adapter)."""

    returns_deltas = True
