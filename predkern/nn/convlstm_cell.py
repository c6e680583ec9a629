"""ConvLSTM cells of OpenSTL and ndrplz/ConvLSTM_pytorch on predkern's fused gate op."""
from __future__ import annotations

import torch
from torch import nn

from predkern import ops
from predkern.nn._signature import frame_and_conv
from predkern.nn.stlstm_cell import _conv, zero_state_conv


class ConvLSTMCell(nn.Module):
    """OpenSTL's ConvLSTM cell, ``forward(x, h, c) -> (h, c)``: gates i, f, g, o from conv_x(x) +
    conv_h(h), no forget bias, no conv bias. Takes OpenSTL's ``(in_channel, num_hidden, height,
    width, filter_size, stride, layer_norm)`` (or the square-frame form without height). Its
    state_dict has OpenSTL's keys, including conv_o and conv_last, which OpenSTL creates and
    never uses: they are kept so its checkpoints load with strict=True."""

    def __init__(self, in_channel, num_hidden, *args, **kwargs):
        super().__init__()
        height, width, k, stride, layer_norm = frame_and_conv(type(self).__name__, args, kwargs)
        C = num_hidden
        self.num_hidden = C
        self.padding = k // 2
        self._forget_bias = 1.0  # OpenSTL stores it and does not use it

        def norm(blocks):
            return [blocks * C, height, width] if layer_norm else None

        self.conv_x = _conv(in_channel, 4 * C, k, stride, norm(4))
        self.conv_h = _conv(C, 4 * C, k, stride, norm(4))
        self.conv_o = _conv(2 * C, C, k, stride, norm(1))
        self.conv_last = nn.Conv2d(2 * C, C, kernel_size=1, stride=1, padding=0, bias=False)

    def forward(self, x_t, h_t, c_t):
        """h_t may be None for a zero hidden state (predkern's ConvLSTM model passes it at its
        first step): conv_h is then skipped, and without LayerNorm its gates too."""
        gates_x = self.conv_x(x_t)
        if h_t is not None:
            gates_h = self.conv_h(h_t)
        else:
            gates_h = zero_state_conv(self.conv_h, gates_x) if len(self.conv_h) > 1 else None
        return ops.convlstm_gates(gates_x, c_t, gates_h, gate_order="ifgo")


class ConvLSTMCellNdrplz(nn.Module):
    """ndrplz/ConvLSTM_pytorch's cell, ``ConvLSTMCell(input_dim, hidden_dim, kernel_size, bias)``,
    ``forward(input_tensor, cur_state=(h, c)) -> (h, c)``: one conv over [x, h] (key
    ``conv.weight`` [4C, Cin+C, kh, kw] and ``conv.bias``), gate order i f o g, no forget bias.
    The conv stays one conv over cat([x, h]) as in the peer: splitting it over x and h would copy
    the two non-contiguous weight slices on every step instead, and launch a conv more."""

    def __init__(self, input_dim, hidden_dim, kernel_size, bias):
        super().__init__()
        self.input_dim, self.hidden_dim = input_dim, hidden_dim
        self.kernel_size = tuple(kernel_size) if isinstance(kernel_size, (tuple, list)) else (kernel_size, kernel_size)
        self.padding = (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        self.bias = bias
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size=self.kernel_size,
                              padding=self.padding, bias=bias)

    def forward(self, input_tensor, cur_state):
        h_cur, c_cur = cur_state
        gates = self.conv(torch.cat([input_tensor, h_cur], dim=1))
        return ops.convlstm_gates(gates, c_cur, gate_order="ifog")

    def init_hidden(self, batch_size, image_size):
        height, width = image_size
        w = self.conv.weight
        return (torch.zeros(batch_size, self.hidden_dim, height, width, device=w.device, dtype=w.dtype),
                torch.zeros(batch_size, self.hidden_dim, height, width, device=w.device, dtype=w.dtype))
