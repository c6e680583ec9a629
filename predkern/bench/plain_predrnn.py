"""The baseline of the training-iteration benchmark: thuml/predrnn-pytorch's PredRNN-V2 as its
users run it, eager PyTorch (its cell's split/sigmoid/tanh gate math, torch.cat of the memory,
and per layer and step the adapter, F.normalize and cosine_similarity of the decoupling loss).
Same constructor, configs and state_dict keys as predkern.nn.PredRNNv2."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainSTLSTMCellv2(nn.Module):
    def __init__(self, in_channel, num_hidden, height, width, filter_size, stride, layer_norm):
        super().__init__()
        self.num_hidden = num_hidden
        p = filter_size // 2

        def conv(cin, blocks):
            layers = [nn.Conv2d(cin, blocks * num_hidden, filter_size, stride, p, bias=False)]
            if layer_norm:
                layers.append(nn.LayerNorm([blocks * num_hidden, height, width]))
            return nn.Sequential(*layers)

        self.conv_x, self.conv_h, self.conv_m = conv(in_channel, 7), conv(num_hidden, 4), conv(num_hidden, 3)
        self.conv_o = conv(2 * num_hidden, 1)
        self.conv_last = nn.Conv2d(2 * num_hidden, num_hidden, 1, 1, 0, bias=False)

    def forward(self, x_t, h_t, c_t, m_t):
        i_x, f_x, g_x, i_x_p, f_x_p, g_x_p, o_x = torch.split(self.conv_x(x_t), self.num_hidden, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h_t), self.num_hidden, dim=1)
        i_m, f_m, g_m = torch.split(self.conv_m(m_t), self.num_hidden, dim=1)
        i_t, f_t, g_t = torch.sigmoid(i_x + i_h), torch.sigmoid(f_x + f_h + 1.0), torch.tanh(g_x + g_h)
        delta_c = i_t * g_t
        c_new = f_t * c_t + delta_c
        i_p, f_p, g_p = torch.sigmoid(i_x_p + i_m), torch.sigmoid(f_x_p + f_m + 1.0), torch.tanh(g_x_p + g_m)
        delta_m = i_p * g_p
        m_new = f_p * m_t + delta_m
        mem = torch.cat((c_new, m_new), 1)
        o_t = torch.sigmoid(o_x + o_h + self.conv_o(mem))
        h_new = o_t * torch.tanh(self.conv_last(mem))
        return h_new, c_new, m_new, delta_c, delta_m


class PlainCellStack(nn.Module):
    """What thuml's and OpenSTL's models build alike: a stack of `cell_class` cells over
    patch-space frames, the 1x1 conv_last read-out and the MSE loss, on thuml-style configs
    (img_width, img_channel, patch_size, filter_size, stride, layer_norm, input_length,
    total_length)."""

    cell_class: type

    def __init__(self, num_layers, num_hidden, configs):
        super().__init__()
        self.configs, self.num_layers, self.num_hidden = configs, num_layers, num_hidden
        self.frame_channel = configs.patch_size ** 2 * configs.img_channel
        width = configs.img_width // configs.patch_size
        self.cell_list = nn.ModuleList(
            self.cell_class(self.frame_channel if i == 0 else num_hidden[i - 1], num_hidden[i], width, width,
                            configs.filter_size, configs.stride, configs.layer_norm) for i in range(num_layers))
        self.conv_last = nn.Conv2d(num_hidden[-1], self.frame_channel, 1, 1, 0, bias=False)
        self.MSE_criterion = nn.MSELoss()


class PlainPredRNNv2(PlainCellStack):
    """thuml's `RNN` (predrnn_v2.py), with reverse scheduled sampling (configs also give
    decouple_beta)."""

    cell_class = PlainSTLSTMCellv2

    def __init__(self, num_layers, num_hidden, configs):
        super().__init__(num_layers, num_hidden, configs)
        self.adapter = nn.Conv2d(num_hidden[0], num_hidden[0], 1, 1, 0, bias=False)

    def forward(self, frames_tensor, mask_true):
        frames = frames_tensor.permute(0, 1, 4, 2, 3).contiguous()
        mask_true = mask_true.permute(0, 1, 4, 2, 3).contiguous()
        batch, height, width = frames.shape[0], frames.shape[3], frames.shape[4]
        h_t, c_t, next_frames, decouple_loss = [], [], [], []
        for i in range(self.num_layers):
            zeros = frames.new_zeros(batch, self.num_hidden[i], height, width)
            h_t.append(zeros)
            c_t.append(zeros)
        memory = frames.new_zeros(batch, self.num_hidden[0], height, width)
        x_gen = None
        for t in range(self.configs.total_length - 1):
            net = frames[:, t] if t == 0 else mask_true[:, t - 1] * frames[:, t] + (1 - mask_true[:, t - 1]) * x_gen
            for i in range(self.num_layers):
                h_t[i], c_t[i], memory, delta_c, delta_m = self.cell_list[i](net if i == 0 else h_t[i - 1], h_t[i],
                                                                             c_t[i], memory)
                dc = F.normalize(self.adapter(delta_c).view(delta_c.shape[0], delta_c.shape[1], -1), dim=2)
                dm = F.normalize(self.adapter(delta_m).view(delta_m.shape[0], delta_m.shape[1], -1), dim=2)
                decouple_loss.append(torch.mean(torch.abs(torch.cosine_similarity(dc, dm, dim=2))))
            x_gen = self.conv_last(h_t[-1])
            next_frames.append(x_gen)
        decouple_loss = torch.mean(torch.stack(decouple_loss, dim=0))
        next_frames = torch.stack(next_frames, dim=0).permute(1, 0, 3, 4, 2).contiguous()
        loss = self.MSE_criterion(next_frames, frames_tensor[:, 1:]) + self.configs.decouple_beta * decouple_loss
        return next_frames, loss
