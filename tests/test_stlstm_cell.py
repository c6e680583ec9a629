"""A whole PredRNN ST-LSTM cell written with the two fused stages (and conv_o + conv_last run as
one conv) against the same cell written as plain PyTorch from SPEC.md section 2: outputs and every
parameter's gradient, layer_norm off and on."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import predkern
from predkern import backends
from conftest import backend_device


class PlainCell(nn.Module):
    """thuml/predrnn-pytorch SpatioTemporalLSTMCell, written from the equations."""

    def __init__(self, in_channel, C, width, k, layer_norm):
        super().__init__()
        self.C, self.k, self.layer_norm = C, k, layer_norm

        def conv(cin, cout, kk):
            return nn.Conv2d(cin, cout, kk, padding=kk // 2, bias=False)

        self.conv_x, self.conv_h, self.conv_m = conv(in_channel, 7 * C, k), conv(C, 4 * C, k), conv(C, 3 * C, k)
        self.conv_o, self.conv_last = conv(2 * C, C, k), conv(2 * C, C, 1)
        if layer_norm:
            self.ln = nn.ModuleDict({n: nn.LayerNorm([m * C, width, width])
                                     for n, m in (("x", 7), ("h", 4), ("m", 3), ("o", 1))})

    def norm(self, name, t):
        return self.ln[name](t) if self.layer_norm else t

    def forward(self, x, h, c, m):
        x_cat = self.norm("x", self.conv_x(x))
        h_cat = self.norm("h", self.conv_h(h))
        m_cat = self.norm("m", self.conv_m(m))
        i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(x_cat, self.C, dim=1)
        i_h, f_h, g_h, o_h = torch.split(h_cat, self.C, dim=1)
        i_m, f_m, g_m = torch.split(m_cat, self.C, dim=1)
        i, f, g = torch.sigmoid(i_x + i_h), torch.sigmoid(f_x + f_h + 1.0), torch.tanh(g_x + g_h)
        delta_c = i * g
        c_new = f * c + delta_c
        ip, fp, gp = torch.sigmoid(i_xp + i_m), torch.sigmoid(f_xp + f_m + 1.0), torch.tanh(g_xp + g_m)
        delta_m = ip * gp
        m_new = fp * m + delta_m
        mem = torch.cat((c_new, m_new), 1)
        o = torch.sigmoid(o_x + o_h + self.norm("o", self.conv_o(mem)))
        h_new = o * torch.tanh(self.conv_last(mem))
        return h_new, c_new, m_new, delta_c, delta_m


def fused_forward(cell, x, h, c, m):
    """The same cell on predkern's ops: stage 1, one conv for conv_o and conv_last, stage 2."""
    x_cat = cell.norm("x", cell.conv_x(x))
    h_cat = cell.norm("h", cell.conv_h(h))
    m_cat = cell.norm("m", cell.conv_m(m))
    mem, delta_c, delta_m = predkern.stlstm_memory(x_cat, h_cat, m_cat, c, m, forget_bias=1.0)
    p = cell.k // 2  # conv_last's 1x1 weight, zero-padded to k x k and centred, beside conv_o's
    weight = torch.cat([cell.conv_o.weight, F.pad(cell.conv_last.weight, (p, p, p, p))], dim=0)
    o_conv, last_conv = F.conv2d(mem, weight, padding=p).chunk(2, dim=1)
    h_new = predkern.stlstm_output(x_cat, h_cat, cell.norm("o", o_conv), last_conv)
    C = cell.C
    return h_new, mem[:, :C], mem[:, C:], delta_c, delta_m


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_cell_matches_plain_pytorch(backend, layer_norm):
    device = backend_device(backend)
    torch.manual_seed(0)
    B, Cin, C, W, k = 2, 3, 4, 6, 5
    cell = PlainCell(Cin, C, W, k, layer_norm).double().to(device)
    if layer_norm:  # non-trivial affine parameters, so their gradients are checked too
        for p in cell.ln.parameters():
            p.data.normal_()
    x, h, c, m = (torch.randn(B, n, W, W, dtype=torch.float64, device=device, requires_grad=True)
                  for n in (Cin, C, C, C))
    params = dict(cell.named_parameters())
    inputs = [x, h, c, m, *params.values()]
    gen = torch.Generator().manual_seed(1)
    out_grads = [torch.randn(B, C, W, W, generator=gen, dtype=torch.float64).to(device) for _ in range(5)]
    # the decoupling loss reaches the deltas in PredRNN-V2: give every output a gradient
    ref = cell(x, h, c, m)
    ref_grads = torch.autograd.grad(ref, inputs, out_grads)
    with backends.use(backend):
        got = fused_forward(cell, x, h, c, m)
    got_grads = torch.autograd.grad(got, inputs, out_grads)
    names = ["h", "c", "m", "delta_c", "delta_m"]
    for n, g, r in zip(names, got, ref):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-10, msg=lambda s: f"{n}: {s}")
    grad_names = ["x", "h", "c", "m", *params]
    for n, g, r in zip(grad_names, got_grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9, msg=lambda s: f"grad of {n}: {s}")
