"""Plain-PyTorch peers written from SPEC.md sections 2 and 6 (thuml/predrnn-pytorch, OpenSTL,
ndrplz/ConvLSTM_pytorch): the independent implementations predkern.nn is tested against. They
import nothing from predkern."""
import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def seq_conv(cin, cout, k, norm_shape=None):
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False)]
    if norm_shape:
        layers.append(nn.LayerNorm(norm_shape))
    return nn.Sequential(*layers)


class PeerSTLSTM(nn.Module):
    """thuml/OpenSTL SpatioTemporalLSTMCell (v2 when deltas=True), from SPEC.md sections 2 and 6."""

    def __init__(self, cin, C, H, W, k, layer_norm, deltas):
        super().__init__()
        self.C, self.deltas = C, deltas
        n = (lambda b: [b * C, H, W]) if layer_norm else (lambda b: None)
        self.conv_x, self.conv_h = seq_conv(cin, 7 * C, k, n(7)), seq_conv(C, 4 * C, k, n(4))
        self.conv_m, self.conv_o = seq_conv(C, 3 * C, k, n(3)), seq_conv(2 * C, C, k, n(1))
        self.conv_last = nn.Conv2d(2 * C, C, 1, bias=False)

    def forward(self, x, h, c, m):
        i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(self.conv_x(x), self.C, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.C, dim=1)
        i_m, f_m, g_m = torch.split(self.conv_m(m), self.C, dim=1)
        i, f, g = torch.sigmoid(i_x + i_h), torch.sigmoid(f_x + f_h + 1.0), torch.tanh(g_x + g_h)
        delta_c = i * g
        c_new = f * c + delta_c
        ip, fp, gp = torch.sigmoid(i_xp + i_m), torch.sigmoid(f_xp + f_m + 1.0), torch.tanh(g_xp + g_m)
        delta_m = ip * gp
        m_new = fp * m + delta_m
        mem = torch.cat((c_new, m_new), 1)
        h_new = torch.sigmoid(o_x + o_h + self.conv_o(mem)) * torch.tanh(self.conv_last(mem))
        return (h_new, c_new, m_new, delta_c, delta_m) if self.deltas else (h_new, c_new, m_new)


class PeerOpenSTLConvLSTM(nn.Module):
    def __init__(self, cin, C, H, W, k, layer_norm):
        super().__init__()
        self.C = C
        n = (lambda b: [b * C, H, W]) if layer_norm else (lambda b: None)
        self.conv_x, self.conv_h, self.conv_o = seq_conv(cin, 4 * C, k, n(4)), seq_conv(C, 4 * C, k, n(4)), \
            seq_conv(2 * C, C, k, n(1))
        self.conv_last = nn.Conv2d(2 * C, C, 1, bias=False)

    def forward(self, x, h, c):
        i_x, f_x, g_x, o_x = torch.split(self.conv_x(x), self.C, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.C, dim=1)
        c_new = torch.sigmoid(f_x + f_h) * c + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        return torch.sigmoid(o_x + o_h) * torch.tanh(c_new), c_new


class PeerNdrplzConvLSTM(nn.Module):
    def __init__(self, input_dim, hidden_dim, kernel_size, bias):
        super().__init__()
        self.hidden_dim = hidden_dim
        self.conv = nn.Conv2d(input_dim + hidden_dim, 4 * hidden_dim, kernel_size,
                              padding=(kernel_size[0] // 2, kernel_size[1] // 2), bias=bias)

    def forward(self, input_tensor, cur_state):
        h, c = cur_state
        cc_i, cc_f, cc_o, cc_g = torch.split(self.conv(torch.cat([input_tensor, h], dim=1)), self.hidden_dim, dim=1)
        c_next = torch.sigmoid(cc_f) * c + torch.sigmoid(cc_i) * torch.tanh(cc_g)
        return torch.sigmoid(cc_o) * torch.tanh(c_next), c_next


class PeerRecurrentModel(nn.Module):
    """thuml's PredRNN / PredRNN-V2 `RNN` and OpenSTL's ConvLSTM_Model, as in their repos: frames
    (B, T, h, w, c) in patch space, peer-layout masks (B, steps, h, w, c), returns (next_frames, loss).
    kind: "predrnn", "predrnn_v2" or "convlstm"."""

    def __init__(self, kind, num_hidden, configs):
        super().__init__()
        self.kind, self.num_hidden, self.configs = kind, num_hidden, configs
        if hasattr(configs, "in_shape"):  # OpenSTL
            _, img_channel, H, W = configs.in_shape
            H, W = H // configs.patch_size, W // configs.patch_size
        else:  # thuml
            img_channel, H = configs.img_channel, configs.img_width // configs.patch_size
            W = H
        frame_channel = configs.patch_size ** 2 * img_channel
        k, layer_norm = configs.filter_size, configs.layer_norm
        cells = []
        for i, C in enumerate(num_hidden):
            cin = frame_channel if i == 0 else num_hidden[i - 1]
            if kind == "convlstm":
                cells.append(PeerOpenSTLConvLSTM(cin, C, H, W, k, layer_norm))
            else:
                cells.append(PeerSTLSTM(cin, C, H, W, k, layer_norm, deltas=kind == "predrnn_v2"))
        self.cell_list = nn.ModuleList(cells)
        self.conv_last = nn.Conv2d(num_hidden[-1], frame_channel, 1, bias=False)
        if kind == "predrnn_v2":
            self.adapter = nn.Conv2d(num_hidden[0], num_hidden[0], 1, bias=False)

    def forward(self, frames_tensor, mask_true, **kwargs):
        frames = frames_tensor.permute(0, 1, 4, 2, 3).contiguous()
        mask_true = mask_true.permute(0, 1, 4, 2, 3).contiguous()
        B, _, _, H, W = frames.shape
        # as the peers make them: torch.zeros in the default dtype (their float64 users set it)
        h = [torch.zeros(B, C, H, W, device=frames.device) for C in self.num_hidden]
        c = [torch.zeros(B, C, H, W, device=frames.device) for C in self.num_hidden]
        memory = torch.zeros(B, self.num_hidden[0], H, W, device=frames.device)
        next_frames, decouple, x_gen = [], [], None
        # read at each call, as the peers do
        input_length = getattr(self.configs, "pre_seq_length", None) or self.configs.input_length
        for t in range(self.configs.total_length - 1):
            if self.configs.reverse_scheduled_sampling == 1:
                net = frames[:, t] if t == 0 else mask_true[:, t - 1] * frames[:, t] + (1 - mask_true[:, t - 1]) * x_gen
            elif t < input_length:
                net = frames[:, t]
            else:
                j = t - input_length
                net = mask_true[:, j] * frames[:, t] + (1 - mask_true[:, j]) * x_gen
            for i, cell in enumerate(self.cell_list):
                inp = net if i == 0 else h[i - 1]
                if self.kind == "convlstm":
                    h[i], c[i] = cell(inp, h[i], c[i])
                elif self.kind == "predrnn":
                    h[i], c[i], memory = cell(inp, h[i], c[i], memory)
                else:
                    h[i], c[i], memory, delta_c, delta_m = cell(inp, h[i], c[i], memory)
                    dc = F.normalize(self.adapter(delta_c).view(B, delta_c.shape[1], -1), dim=2)
                    dm = F.normalize(self.adapter(delta_m).view(B, delta_m.shape[1], -1), dim=2)
                    decouple.append(torch.mean(torch.abs(torch.cosine_similarity(dc, dm, dim=2))))
            x_gen = self.conv_last(h[-1])
            next_frames.append(x_gen)
        next_frames = torch.stack(next_frames, dim=0).permute(1, 0, 3, 4, 2).contiguous()
        if not kwargs.get("return_loss", True):  # OpenSTL's keyword
            return next_frames, None
        loss = F.mse_loss(next_frames, frames_tensor[:, 1:])
        if decouple:
            loss = loss + self.configs.decouple_beta * torch.mean(torch.stack(decouple, dim=0))
        return next_frames, loss


@contextlib.contextmanager
def default_dtype(dtype):
    """torch's default dtype set to `dtype` for a while: how a user runs the peer models (whose
    zero states come from a bare torch.zeros) in float64."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)
