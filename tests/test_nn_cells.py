"""predkern.nn cells against the peers' cells written in plain PyTorch from SPEC.md (tests/peers.py): a peer's
state_dict loads with strict=True, outputs and every parameter's gradient match, float64 and
float32, on every backend."""
import pytest
import torch

import predkern.nn as pknn
from predkern import backends
from conftest import backend_device
from peers import PeerNdrplzConvLSTM, PeerOpenSTLConvLSTM, PeerSTLSTM


def compare(backend, peer, ours, inputs, dtype, rel):
    device = backend_device(backend)
    peer = peer.to(device, dtype)
    ours.load_state_dict(peer.state_dict(), strict=True)
    ours = ours.to(device, dtype)
    gen = torch.Generator().manual_seed(2)
    xs = [t.to(device, dtype) for t in inputs]
    results = []
    for module in (peer, ours):
        leaves = [x.clone().requires_grad_(True) for x in xs]
        with backends.use(backend):
            outs = module(*leaves[:1], *leaves[1:]) if not isinstance(module, (PeerNdrplzConvLSTM, pknn.ConvLSTMCellNdrplz)) \
                else module(leaves[0], (leaves[1], leaves[2]))
        gen.manual_seed(2)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs)
        params = list(module.parameters())
        grads = torch.autograd.grad(loss, leaves + params, allow_unused=True)  # OpenSTL's unused convs
        results.append((outs, grads))
    (peer_outs, peer_grads), (our_outs, our_grads) = results
    assert len(peer_outs) == len(our_outs)
    for name, a, b in [*(("out", p, o) for p, o in zip(peer_outs, our_outs)),
                       *(("grad", p, o) for p, o in zip(peer_grads, our_grads))]:
        assert (a is None) == (b is None), name
        if a is None:
            continue
        scale = max(1.0, a.abs().max().item())
        err = (a.double() - b.double()).abs().max().item() / scale
        assert err <= rel, f"{name}: {err:.3g}"


DTYPES = [(torch.float64, 1e-12), (torch.float32, 1e-5)]


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_stlstm_cell_matches_peer(backend, v2, layer_norm, dtype, rel):
    B, cin, C, H, W, k = 2, 3, 4, 6, 5, 3
    peer = PeerSTLSTM(cin, C, H, W, k, layer_norm, deltas=v2)
    cls = pknn.SpatioTemporalLSTMCellv2 if v2 else pknn.SpatioTemporalLSTMCell
    ours = cls(cin, C, H, W, k, 1, layer_norm)  # OpenSTL's signature
    inputs = [torch.randn(B, cin, H, W), *(torch.randn(B, C, H, W) for _ in range(3))]
    compare(backend, peer, ours, inputs, dtype, rel)


def test_stlstm_thuml_signature_and_keys():
    ours = pknn.SpatioTemporalLSTMCellv2(in_channel=16, num_hidden=8, width=4, filter_size=5, stride=1, layer_norm=True)
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes["conv_x.0.weight"] == (56, 16, 5, 5) and shapes["conv_h.0.weight"] == (32, 8, 5, 5)
    assert shapes["conv_m.0.weight"] == (24, 8, 5, 5) and shapes["conv_o.0.weight"] == (8, 16, 5, 5)
    assert shapes["conv_last.weight"] == (8, 16, 1, 1) and shapes["conv_x.1.weight"] == (56, 4, 4)
    with pytest.raises(TypeError, match=r"height, width, filter_size.*then 2 positional arguments \(4, 5\)$"):
        pknn.SpatioTemporalLSTMCell(16, 8, 4, 5)
    with pytest.raises(TypeError, match=r"then 1 positional argument \(4,\) and keyword arguments stride=1$"):
        pknn.SpatioTemporalLSTMCell(16, 8, 4, stride=1)


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
def test_openstl_convlstm_cell_matches_peer(backend, layer_norm, dtype, rel):
    B, cin, C, H, W, k = 2, 3, 4, 6, 5, 3
    peer = PeerOpenSTLConvLSTM(cin, C, H, W, k, layer_norm)
    ours = pknn.ConvLSTMCell(cin, C, H, W, k, 1, layer_norm)
    inputs = [torch.randn(B, cin, H, W), torch.randn(B, C, H, W), torch.randn(B, C, H, W)]
    compare(backend, peer, ours, inputs, dtype, rel)


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_ndrplz_convlstm_cell_matches_peer(backend, bias, dtype, rel):
    B, cin, C, H, W = 2, 3, 4, 6, 5
    peer = PeerNdrplzConvLSTM(cin, C, (3, 5), bias)
    ours = pknn.ConvLSTMCellNdrplz(cin, C, (3, 5), bias)
    inputs = [torch.randn(B, cin, H, W), torch.randn(B, C, H, W), torch.randn(B, C, H, W)]
    compare(backend, peer, ours, inputs, dtype, rel)


@pytest.mark.parametrize("layer_norm", [False, True], ids=["plain", "layer_norm"])
@pytest.mark.parametrize("kind", ["stlstm", "stlstm_v2", "convlstm"])
def test_zero_hidden_state_skips_conv_h(backend, kind, layer_norm):
    """h=None (the models' first step) gives what the peer gives for h = zeros, outputs and every
    gradient, and conv_h's conv does not run."""
    device = backend_device(backend)
    B, cin, C, H, W, k = 2, 3, 4, 6, 5, 3
    if kind == "convlstm":
        peer, ours = PeerOpenSTLConvLSTM(cin, C, H, W, k, layer_norm), pknn.ConvLSTMCell(cin, C, H, W, k, 1, layer_norm)
    else:
        peer = PeerSTLSTM(cin, C, H, W, k, layer_norm, deltas=kind == "stlstm_v2")
        ours = (pknn.SpatioTemporalLSTMCellv2 if kind == "stlstm_v2" else pknn.SpatioTemporalLSTMCell)(
            cin, C, H, W, k, 1, layer_norm)
    ours.load_state_dict(peer.state_dict(), strict=True)
    peer, ours = peer.to(device, torch.float64), ours.to(device, torch.float64)
    ran = []
    ours.conv_h[0].register_forward_hook(lambda *args: ran.append(1))
    gen = torch.Generator().manual_seed(3)
    channels = (cin, C) if kind == "convlstm" else (cin, C, C)  # x, c[, m]
    x, *states = (torch.randn(B, n, H, W, generator=gen, dtype=torch.float64).to(device) for n in channels)
    results = []
    for module, h in ((peer, torch.zeros(B, C, H, W, dtype=torch.float64, device=device)), (ours, None)):
        leaves = [t.clone().requires_grad_(True) for t in (x, *states)]
        with backends.use(backend):
            outs = module(leaves[0], h, *leaves[1:])
        gen.manual_seed(4)
        loss = sum((o * torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)).sum() for o in outs)
        results.append((outs, torch.autograd.grad(loss, leaves + list(module.parameters()), allow_unused=True)))
    assert not ran
    (peer_outs, peer_grads), (our_outs, our_grads) = results
    for a, b in zip((*peer_outs, *peer_grads), (*our_outs, *our_grads)):
        if a is None or b is None:  # OpenSTL's unused convs, and conv_h's weight, which gets zeros or nothing
            assert a is None or not a.any()
            assert b is None or not b.any()
            continue
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
