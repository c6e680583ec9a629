"""The baseline of the PredNet training-iteration benchmark, and the plain model tests/test_nn_prednet.py
checks predkern.nn.PredNet against: coxlab/prednet's PredNet (Keras prednet.py, kitti_train.py's
loss) in eager PyTorch, one separate conv per gate, unit by unit as the Keras code runs. Same
constructor (positional sizes) and parameter names as predkern.nn.PredNet. It imports nothing
from predkern."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def hard_sigmoid(x):
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)  # Keras' hard_sigmoid, not F.hardsigmoid


def upsample2(x):
    return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)


class PlainPredNet(nn.Module):
    """coxlab PredNet.step, one separate conv per gate, unit by unit as the Keras code does."""

    def __init__(self, stack, R, A_filt, Ahat_filt, R_filt, pixel_max=1.0, extrap_start_time=None):
        super().__init__()
        self.stack, self.R, self.L = stack, R, len(stack)
        self.pixel_max, self.extrap_start_time = pixel_max, extrap_start_time
        L = self.L
        for g in "ifco":
            setattr(self, f"conv_{g}", nn.ModuleList(
                nn.Conv2d(2 * stack[l] + R[l] + (R[l + 1] if l < L - 1 else 0), R[l], R_filt[l], padding="same")
                for l in range(L)))
        self.conv_ahat = nn.ModuleList(nn.Conv2d(R[l], stack[l], Ahat_filt[l], padding="same") for l in range(L))
        self.conv_a = nn.ModuleList(nn.Conv2d(2 * stack[l], stack[l + 1], A_filt[l], padding="same")
                                    for l in range(L - 1))

    def forward(self, frames):
        B, T, _, H, W = frames.shape
        L = self.L
        r = [frames.new_zeros(B, self.R[l], H // 2 ** l, W // 2 ** l) for l in range(L)]
        c = [torch.zeros_like(x) for x in r]
        e = [frames.new_zeros(B, 2 * self.stack[l], H // 2 ** l, W // 2 ** l) for l in range(L)]
        out = {"prediction": [], "error": [], "units": []}
        prev = torch.zeros_like(frames[:, 0])
        for t in range(T):
            a = frames[:, t]
            if self.extrap_start_time is not None and t >= self.extrap_start_time:
                a = prev
            r_new, c_new = [None] * L, [None] * L
            for l in reversed(range(L)):
                inputs = [r[l], e[l]] + ([upsample2(r_new[l + 1])] if l < L - 1 else [])
                x = torch.cat(inputs, dim=1)
                i = hard_sigmoid(self.conv_i[l](x))
                f = hard_sigmoid(self.conv_f[l](x))
                o = hard_sigmoid(self.conv_o[l](x))
                c_new[l] = f * c[l] + i * torch.tanh(self.conv_c[l](x))
                r_new[l] = o * torch.tanh(c_new[l])
            r, c = r_new, c_new
            units, errs = {}, []
            for l in range(L):
                ahat = torch.relu(self.conv_ahat[l](r[l]))
                if l == 0:
                    ahat = torch.minimum(ahat, ahat.new_tensor(self.pixel_max))
                    prev = ahat
                e[l] = torch.cat((torch.relu(ahat - a), torch.relu(a - ahat)), dim=1)
                errs.append(e[l].reshape(B, -1).mean(dim=1))
                units.update({f"R{l}": r[l], f"E{l}": e[l], f"A{l}": a, f"Ahat{l}": ahat})
                if l < L - 1:
                    a = F.max_pool2d(torch.relu(self.conv_a[l](e[l])), kernel_size=2, stride=2)
            out["prediction"].append(prev)
            out["error"].append(torch.stack(errs, dim=1))
            out["units"].append(units)
        return out


def plain_loss(errors, layer_weights):
    """kitti_train.py: Dense(layer weights), then Dense(time weights 0, 1/(nt-1), ...), MAE to 0."""
    B, T, L = errors.shape
    total = errors.new_zeros(B)
    for t in range(1, T):
        for l in range(L):
            total = total + errors[:, t, l] * layer_weights[l] / (T - 1)
    return total.abs().mean()
