"""The baseline of the ConvLSTM training-iteration benchmark: OpenSTL's ConvLSTM_Model as its users
run it, eager PyTorch (its cell's split/sigmoid/tanh gate math, no forget bias), on thuml-style
configs as predkern.nn.ConvLSTM takes them. Its parameter names are predkern's, less the conv_o and
conv_last that OpenSTL's cells create and never use."""
from __future__ import annotations

import torch
from torch import nn

from predkern.bench.plain_predrnn import PlainCellStack


class PlainConvLSTMCell(nn.Module):
    def __init__(self, in_channel, num_hidden, height, width, filter_size, stride, layer_norm):
        super().__init__()
        self.num_hidden = num_hidden

        def conv(cin):
            layers = [nn.Conv2d(cin, 4 * num_hidden, filter_size, stride, filter_size // 2, bias=False)]
            if layer_norm:
                layers.append(nn.LayerNorm([4 * num_hidden, height, width]))
            return nn.Sequential(*layers)

        self.conv_x, self.conv_h = conv(in_channel), conv(num_hidden)

    def forward(self, x_t, h_t, c_t):
        i_x, f_x, g_x, o_x = torch.split(self.conv_x(x_t), self.num_hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h_t), self.num_hidden, dim=1)
        i_t, f_t, g_t = torch.sigmoid(i_x + i_h), torch.sigmoid(f_x + f_h), torch.tanh(g_x + g_h)
        c_new = f_t * c_t + i_t * g_t
        h_new = torch.sigmoid(o_x + o_h) * torch.tanh(c_new)
        return h_new, c_new


class PlainConvLSTM(PlainCellStack):
    """OpenSTL's ConvLSTM_Model with reverse scheduled sampling, on thuml-style configs."""

    cell_class = PlainConvLSTMCell

    def forward(self, frames_tensor, mask_true):
        frames = frames_tensor.permute(0, 1, 4, 2, 3).contiguous()
        mask_true = mask_true.permute(0, 1, 4, 2, 3).contiguous()
        batch, height, width = frames.shape[0], frames.shape[3], frames.shape[4]
        h_t = [frames.new_zeros(batch, C, height, width) for C in self.num_hidden]
        c_t = [frames.new_zeros(batch, C, height, width) for C in self.num_hidden]
        next_frames, x_gen = [], None
        for t in range(self.configs.total_length - 1):
            net = frames[:, t] if t == 0 else mask_true[:, t - 1] * frames[:, t] + (1 - mask_true[:, t - 1]) * x_gen
            for i in range(self.num_layers):
                h_t[i], c_t[i] = self.cell_list[i](net if i == 0 else h_t[i - 1], h_t[i], c_t[i])
            x_gen = self.conv_last(h_t[-1])
            next_frames.append(x_gen)
        next_frames = torch.stack(next_frames, dim=0).permute(1, 0, 3, 4, 2).contiguous()
        return next_frames, self.MSE_criterion(next_frames, frames_tensor[:, 1:])
