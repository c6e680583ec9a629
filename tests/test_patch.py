"""predkern.patch / unpatch on models built from the peers' plain-PyTorch cells and models
(tests/peers.py): what is recognized, that a training step gives the same parameters before and
after patching (with an optimizer built before), that results are unchanged, that look-alikes
which compute something else are left alone with a warning, and that unpatch restores."""
import copy
import io
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import predkern
import predkern.nn as pknn
from predkern import backends
from conftest import backend_device
from peers import PeerNdrplzConvLSTM, PeerOpenSTLConvLSTM, PeerRecurrentModel, PeerSTLSTM, default_dtype


def thuml_configs(**overrides):
    configs = dict(img_width=8, img_channel=1, patch_size=2, filter_size=3, stride=1, layer_norm=0,
                   input_length=3, total_length=5, reverse_scheduled_sampling=1, decouple_beta=0.1)
    configs.update(overrides)
    return SimpleNamespace(**configs)


def batch(B=2, T=5, size=4, channels=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, T, size, size, channels, generator=gen, dtype=torch.float64)
    mask = (torch.rand(B, T - 2, generator=gen) < 0.5).double()
    return frames, pknn.expand_mask(mask, size, size, channels)


def train_step(model, frames, mask, lr=0.1):
    """One SGD step with an optimizer built before the caller patched (or not) the model."""
    optimizer = model.__dict__.pop("_test_optimizer")
    optimizer.zero_grad()
    _, loss = model(frames, mask)
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("layer_norm", [0, 1], ids=["plain", "layer_norm"])
def test_predrnn_v2_model_patched_trains_the_same(backend, layer_norm):
    device = backend_device(backend)
    torch.manual_seed(0)
    plain = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs(layer_norm=layer_norm)).double().to(device)
    patched = copy.deepcopy(plain)
    for model in (plain, patched):
        model.__dict__["_test_optimizer"] = torch.optim.SGD(model.parameters(), lr=0.1)
    params_before = [id(p) for p in patched.parameters()]
    keys_before = list(patched.state_dict())

    with backends.use(backend):
        done = predkern.patch(patched)
    assert done == {"cell_list.0": "stlstm_v2", "cell_list.1": "stlstm_v2", "": "predrnn_v2_model"}
    assert [id(p) for p in patched.parameters()] == params_before
    assert list(patched.state_dict()) == keys_before

    frames, mask = (t.to(device) for t in batch())
    with default_dtype(torch.float64):
        want = train_step(plain, frames, mask)
    with backends.use(backend):
        got = train_step(patched, frames, mask)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=0)
    for (name, a), b in zip(plain.named_parameters(), patched.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-11, atol=1e-13, msg=name)


def test_patched_forward_matches_float32_and_unpatch_restores():
    torch.manual_seed(0)
    model = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs())
    frames, mask = (t.float() for t in batch())
    want = model(frames, mask)
    assert set(predkern.patch(model)) == {"cell_list.0", "cell_list.1", ""}
    assert model.cell_list[0].forward.func.__module__ == "predkern.patch"
    got = model(frames, mask)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert predkern.patch(model) == {}  # patching twice changes nothing
    assert sorted(predkern.unpatch(model)) == ["", "cell_list.0", "cell_list.1"]
    assert "forward" not in model.__dict__ and "forward" not in model.cell_list[0].__dict__
    torch.testing.assert_close(model(frames, mask)[1], want[1], rtol=0, atol=0)


def test_patched_model_saves_copies_and_compiles():
    torch.manual_seed(0)
    model = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs(total_length=4))
    predkern.patch(model)
    frames, mask = (t.float() for t in batch(T=4))
    want = model(frames, mask)[1]
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    torch.testing.assert_close(loaded(frames, mask)[1], want, rtol=0, atol=0)
    assert "forward" in loaded.cell_list[0].__dict__
    torch.testing.assert_close(copy.deepcopy(model)(frames, mask)[1], want, rtol=0, atol=0)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(frames, mask)[1], want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("make,kind,call", [
    (lambda: PeerSTLSTM(3, 4, 5, 6, 3, False, deltas=False), "stlstm", "xhcm"),
    (lambda: PeerSTLSTM(3, 4, 5, 6, 3, True, deltas=True), "stlstm_v2", "xhcm"),
    (lambda: PeerOpenSTLConvLSTM(3, 4, 5, 6, 3, True), "openstl_convlstm", "xhc"),
    (lambda: PeerNdrplzConvLSTM(3, 4, (3, 5), True), "ndrplz_convlstm", "ndrplz"),
], ids=["stlstm", "stlstm_v2_layer_norm", "openstl_convlstm", "ndrplz"])
def test_cells_recognized_and_equal(make, kind, call):
    torch.manual_seed(0)
    holder = nn.ModuleDict({"encoder": nn.ModuleList([make()])})
    cell = holder["encoder"][0]
    x, h, c, m = torch.randn(2, 3, 5, 6), torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6), torch.randn(2, 4, 5, 6)
    args = {"xhcm": (x, h, c, m), "xhc": (x, h, c), "ndrplz": (x, (h, c))}[call]
    want = cell(*args)
    assert predkern.patch(holder) == {"encoder.0": kind}
    got = cell(*args)
    assert len(got) == len(want)
    for a, b in zip(want, got):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


class OtherForgetBias(PeerSTLSTM):
    """Looks exactly like the peers' ST-LSTM cell, but its forget gates get no +1."""

    def forward(self, x, h, c, m):
        i_x, f_x, g_x, i_xp, f_xp, g_xp, o_x = torch.split(self.conv_x(x), self.C, dim=1)
        i_h, f_h, g_h, o_h = torch.split(self.conv_h(h), self.C, dim=1)
        i_m, f_m, g_m = torch.split(self.conv_m(m), self.C, dim=1)
        c_new = torch.sigmoid(f_x + f_h) * c + torch.sigmoid(i_x + i_h) * torch.tanh(g_x + g_h)
        m_new = torch.sigmoid(f_xp + f_m) * m + torch.sigmoid(i_xp + i_m) * torch.tanh(g_xp + g_m)
        mem = torch.cat((c_new, m_new), 1)
        return torch.sigmoid(o_x + o_h + self.conv_o(mem)) * torch.tanh(self.conv_last(mem)), c_new, m_new


class UnknownLSTMCell(nn.Module):
    def __init__(self):
        super().__init__()
        self.gates = nn.Linear(4, 16)

    def forward(self, x):
        return self.gates(x)


def test_look_alikes_left_alone_with_a_warning():
    model = nn.ModuleList([OtherForgetBias(3, 4, 5, 6, 3, False, deltas=False), UnknownLSTMCell(),
                           PeerSTLSTM(3, 4, 5, 6, 3, False, deltas=False)])
    with pytest.warns(UserWarning) as record:
        done = predkern.patch(model)
    assert done == {"2": "stlstm"}
    messages = " | ".join(str(w.message) for w in record)
    assert "0 (OtherForgetBias)" in messages and "differs from its own" in messages
    assert "1 (UnknownLSTMCell)" in messages and "matches none" in messages
    assert "forward" not in model[0].__dict__ and "forward" not in model[1].__dict__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predkern.patch(model, verbose=False)


def test_predrnn_v2_model_with_visualization_keeps_its_forward():
    model = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs())
    model.visual = 1
    with pytest.warns(UserWarning, match="visual"):
        done = predkern.patch(model)
    assert done == {"cell_list.0": "stlstm_v2", "cell_list.1": "stlstm_v2"}


@pytest.mark.parametrize("layer_norm", [0, 1], ids=["plain", "layer_norm"])
def test_openstl_predrnn_v2_model_patched_with_its_return_loss_keyword(layer_norm):
    """OpenSTL's configs (in_shape, pre_seq_length, aft_seq_length; non-square frames without
    layer_norm) and its forward's return_loss keyword."""
    torch.manual_seed(0)
    H, W = (8, 8) if layer_norm else (8, 12)
    configs = SimpleNamespace(in_shape=(5, 1, H, W), patch_size=2, filter_size=3, stride=1, layer_norm=layer_norm,
                              pre_seq_length=3, aft_seq_length=2, total_length=5, reverse_scheduled_sampling=0,
                              decouple_beta=0.1)
    model = PeerRecurrentModel("predrnn_v2", [4, 4], configs)
    gen = torch.Generator().manual_seed(1)
    frames = torch.rand(2, 5, H // 2, W // 2, 4, generator=gen)
    mask = (torch.rand(2, 1, H // 2, W // 2, 4, generator=gen) < 0.5).float()
    want, want_frames_only = model(frames, mask), model(frames, mask, return_loss=False)
    assert predkern.patch(model) == {"cell_list.0": "stlstm_v2", "cell_list.1": "stlstm_v2", "": "predrnn_v2_model"}
    got, got_frames_only = model(frames, mask), model(frames, mask, return_loss=False)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert want_frames_only[1] is None and got_frames_only[1] is None
    torch.testing.assert_close(got_frames_only[0], want_frames_only[0], rtol=1e-5, atol=1e-6)
