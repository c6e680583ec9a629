"""predkern.nn models (PredRNN, PredRNN-V2, ConvLSTM) against the peers' models written in plain
PyTorch (tests/peers.py): strict state_dict load, next frames, loss and every parameter's gradient,
float64 and float32, on every backend; checkpoints both ways; the sampling schedules and patch
space; compile; bad configs."""
import math
from types import SimpleNamespace

import pytest
import torch

import predkern.nn as pknn
from predkern import backends
from conftest import backend_device
from oracle import saved_bytes
from peers import PeerRecurrentModel, default_dtype

MODELS = {"predrnn": pknn.PredRNN, "predrnn_v2": pknn.PredRNNv2, "convlstm": pknn.ConvLSTM}


def thuml_configs(**overrides):
    configs = dict(img_width=8, img_channel=1, patch_size=2, filter_size=3, stride=1, layer_norm=0,
                   input_length=3, total_length=5, reverse_scheduled_sampling=0, decouple_beta=0.1)
    configs.update(overrides)
    return SimpleNamespace(**configs)


def openstl_configs(**overrides):
    configs = dict(in_shape=(5, 1, 8, 12), patch_size=2, filter_size=3, stride=1, layer_norm=0,
                   pre_seq_length=3, aft_seq_length=2, total_length=5, reverse_scheduled_sampling=0, decouple_beta=0.1)
    configs.update(overrides)
    return SimpleNamespace(**configs)


def make_pair(kind, num_hidden, configs):
    ours = MODELS[kind](len(num_hidden), num_hidden, configs)
    peer = PeerRecurrentModel(kind, num_hidden, configs)
    ours.load_state_dict(peer.state_dict(), strict=True)
    return peer, ours


def model_inputs(ours, B, generator):
    f = ours.frame
    frames = torch.rand(B, f.total_length, f.height, f.width, f.frame_channel, generator=generator,
                        dtype=torch.float64)
    steps = f.total_length - 2 if f.reverse_scheduled_sampling else f.total_length - f.input_length - 1
    mask = (torch.rand(B, steps, generator=generator) < 0.5).double()
    return frames, mask


def run(model, frames, mask, backend=None):
    """next_frames, loss and the gradient of every parameter (in state_dict order)."""
    model.zero_grad()
    if backend is None:
        next_frames, loss = model(frames, mask)
    else:
        with backends.use(backend):
            next_frames, loss = model(frames, mask)
    loss.backward()
    return next_frames.detach(), loss.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_close(name, want, got, rel):
    assert (want is None) == (got is None), name
    if want is None:
        return
    scale = max(1.0, want.abs().max().item())
    err = (want.double() - got.double()).abs().max().item() / scale
    assert err <= rel, f"{name}: {err:.3g} relative to {scale:.3g}"


def compare_models(backend, peer, ours, dtype, rel, B=2):
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(3)
    frames, mask = model_inputs(ours, B, gen)
    f = ours.frame
    peer_mask = pknn.expand_mask(mask, f.height, f.width, f.frame_channel)
    peer, ours = peer.to(device, dtype), ours.to(device, dtype)
    with default_dtype(dtype):
        want = run(peer, frames.to(device, dtype), peer_mask.to(device, dtype))
    for our_mask in (mask, peer_mask):  # the compact mask and the peers' layout
        got = run(ours, frames.to(device, dtype), our_mask.to(device, dtype), backend)
        assert_close("next_frames", want[0], got[0], rel)
        assert_close("loss", want[1], got[1], rel)
        assert set(want[2]) == set(got[2])
        for name in want[2]:
            assert_close(f"grad {name}", want[2][name], got[2][name], rel)
    return want


DTYPES = [(torch.float64, 1e-11), (torch.float32, 2e-5)]


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("reverse", [0, 1], ids=["scheduled", "reverse"])
@pytest.mark.parametrize("kind", ["predrnn", "predrnn_v2"])
def test_predrnn_matches_peer(backend, kind, reverse, dtype, rel):
    peer, ours = make_pair(kind, [4, 4], thuml_configs(reverse_scheduled_sampling=reverse))
    compare_models(backend, peer, ours, dtype, rel)


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("kind", ["predrnn", "predrnn_v2"])
def test_predrnn_layer_norm_non_square_openstl(backend, kind, dtype, rel):
    peer, ours = make_pair(kind, [3, 3], openstl_configs(layer_norm=1, reverse_scheduled_sampling=1))
    assert (ours.frame.height, ours.frame.width) == (4, 6)
    compare_models(backend, peer, ours, dtype, rel)


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
@pytest.mark.parametrize("reverse", [0, 1], ids=["scheduled", "reverse"])
def test_convlstm_model_matches_peer(backend, reverse, dtype, rel):
    peer, ours = make_pair("convlstm", [3, 5], openstl_configs(reverse_scheduled_sampling=reverse))
    compare_models(backend, peer, ours, dtype, rel)


def test_decoupling_term_matters():
    """The v2 loss is MSE + beta * decoupling: a different beta changes the loss by beta times
    the decoupling term, which lies in [0, 1]."""
    peer, ours = make_pair("predrnn_v2", [4, 4], thuml_configs())
    frames, mask = model_inputs(ours, 2, torch.Generator().manual_seed(0))
    ours.double()
    _, loss = ours(frames, mask)
    zero_beta = pknn.PredRNNv2(2, [4, 4], thuml_configs(decouple_beta=0.0)).double()
    zero_beta.load_state_dict(ours.state_dict())
    _, mse = zero_beta(frames, mask)
    decouple = (loss - mse).item() / 0.1
    assert 0.0 < decouple <= 1.0


def test_v2_loss_without_autograd_takes_each_term_as_it_comes():
    """Without autograd PredRNN-V2 takes each step's decoupling term at once (keeping no deltas),
    with autograd it stacks them: the same loss, and the peer's."""
    peer, ours = make_pair("predrnn_v2", [4, 4], thuml_configs())
    frames, mask = model_inputs(ours, 2, torch.Generator().manual_seed(1))
    peer.double(), ours.double()
    calls = []
    ours.adapter.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    f = ours.frame
    with torch.no_grad(), default_dtype(torch.float64):
        _, evaluated = ours(frames, mask)
        _, peer_loss = peer(frames, pknn.expand_mask(mask, f.height, f.width, f.frame_channel))
    terms = len(calls) // 2
    assert terms == 2 * (frames.shape[1] - 1) and set(calls) == {2}  # a term per layer and step
    calls.clear()
    _, trained = ours(frames, mask)
    assert calls == [2 * terms, 2 * terms]  # two stacks, one adapter call each
    torch.testing.assert_close(evaluated, trained.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(evaluated, peer_loss, rtol=1e-12, atol=0)


def test_thuml_checkpoint_round_trip(tmp_path):
    peer, _ = make_pair("predrnn_v2", [4, 4], thuml_configs(layer_norm=1))
    path = tmp_path / "model.ckpt-100"
    torch.save({"net_param": peer.state_dict()}, path)  # what thuml's Model.save writes
    ours = pknn.PredRNNv2(2, [4, 4], thuml_configs(layer_norm=1))
    pknn.load_checkpoint(ours, str(path))
    for name, tensor in peer.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    back = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs(layer_norm=1))
    back.load_state_dict(pknn.thuml_checkpoint(ours)["net_param"], strict=True)
    for name, tensor in back.state_dict().items():
        assert torch.equal(ours.state_dict()[name], tensor), name
    lightning = {"state_dict": {f"model.{k}": v for k, v in peer.state_dict().items()}}
    pknn.load_checkpoint(pknn.PredRNNv2(2, [4, 4], thuml_configs(layer_norm=1)), lightning)


def test_model_compiles_without_graph_break():
    backend = "cpu" if backends.unavailable_reason("cpu", "cpu") is None else "reference"
    model = pknn.PredRNNv2(2, [4, 4], thuml_configs(total_length=4, reverse_scheduled_sampling=1))
    frames, mask = model_inputs(model, 2, torch.Generator().manual_seed(0))
    frames, mask = frames.float(), mask.float()
    with backends.use(backend):
        eager = model(frames, mask)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")(frames, mask)
    torch.testing.assert_close(compiled[0], eager[0])
    torch.testing.assert_close(compiled[1], eager[1])


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="same width"):
        pknn.PredRNNv2(2, [4, 8], thuml_configs())
    with pytest.raises(ValueError, match="num_hidden"):
        pknn.PredRNN(3, [4, 4], thuml_configs())
    with pytest.raises(ValueError, match="patch_size"):
        pknn.PredRNN(1, [4], thuml_configs(img_width=7))
    with pytest.raises(ValueError, match="total_length"):
        pknn.ConvLSTM(1, [4], thuml_configs(input_length=5))
    with pytest.raises(ValueError, match="lacks 'filter_size'"):
        pknn.PredRNN(1, [4], SimpleNamespace(img_width=8, input_length=1, total_length=2))
    # thuml's configs describe square frames; its LayerNorms cannot take others
    model = pknn.PredRNN(1, [4], thuml_configs(layer_norm=1))
    frames = torch.rand(2, 5, 4, 6, 4)
    with pytest.raises(ValueError, match="square"):
        model(frames, torch.ones(2, 1))
    model = pknn.PredRNN(1, [4], thuml_configs())
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(2, 5, 4, 4, 3), torch.ones(2, 1))
    with pytest.raises(ValueError, match="mask_true"):
        model(torch.rand(2, 5, 4, 4, 4), torch.ones(3, 1))
    with pytest.raises(ValueError, match="frames"):
        model(torch.rand(2, 4, 4, 4, 4), torch.ones(2, 1))


def test_non_square_frames_without_layer_norm_run():
    """Without layer_norm thuml's model runs on frames of any size, so ours must too."""
    peer = PeerRecurrentModel("predrnn", [4], thuml_configs())
    ours = pknn.PredRNN(1, [4], thuml_configs())
    ours.load_state_dict(peer.state_dict())
    frames, mask = torch.rand(2, 5, 4, 6, 4), torch.ones(2, 1)
    torch.testing.assert_close(ours(frames, mask)[1], peer(frames, pknn.expand_mask(mask, 4, 6, 4))[1])


def test_reverse_schedule_probs():
    s1, s2, alpha = 100, 300, 50
    assert pknn.reverse_schedule_probs(99, s1, s2, alpha) == (0.5, 0.5)
    assert pknn.reverse_schedule_probs(100, s1, s2, alpha) == (0.5, 0.5)
    r_eta, eta = pknn.reverse_schedule_probs(150, s1, s2, alpha)
    assert r_eta == pytest.approx(1 - 0.5 * math.exp(-1.0)) and eta == pytest.approx(0.375)
    assert pknn.reverse_schedule_probs(299, s1, s2, alpha)[1] == pytest.approx(0.5 / 200)
    assert pknn.reverse_schedule_probs(300, s1, s2, alpha) == (1.0, 0.0)


def test_reverse_schedule_mask():
    gen = torch.Generator().manual_seed(0)
    mask = pknn.reverse_schedule_sampling_exp(200, 4000, 10, 20, r_sampling_step_1=100, r_sampling_step_2=300,
                                              r_exp_alpha=50, generator=gen)
    assert mask.shape == (4000, 18) and set(mask.unique().tolist()) <= {0.0, 1.0}
    r_eta, eta = pknn.reverse_schedule_probs(200, 100, 300, 50)
    encoder, decoder = mask[:, :9].mean().item(), mask[:, 9:].mean().item()
    assert abs(encoder - r_eta) < 0.01 and abs(decoder - eta) < 0.01
    late = pknn.reverse_schedule_sampling_exp(10**6, 8, 10, 20)
    assert torch.equal(late[:, :9], torch.ones(8, 9)) and torch.equal(late[:, 9:], torch.zeros(8, 9))


@pytest.mark.parametrize("reverse", [1, 0])
def test_evaluation_mask_is_thumls_test_time_flag(reverse):
    """thuml's run.py test(): real_input_flag has total_length - mask_input - 1 steps (mask_input
    = 1 with reverse scheduled sampling, else input_length), ones on the first input_length - 1
    steps with reverse scheduled sampling, zeros everywhere else."""
    B, input_length, total_length = 3, 4, 9
    mask_input = 1 if reverse else input_length
    flag = torch.zeros(B, total_length - mask_input - 1)
    if reverse:
        flag[:, :input_length - 1] = 1.0
    mask = pknn.evaluation_mask(B, input_length, total_length, reverse_scheduled_sampling=bool(reverse))
    assert torch.equal(mask, flag)
    # the models take it as it is (a predkern model checks the mask's steps)
    model = pknn.PredRNNv2(1, [4], thuml_configs(input_length=input_length, total_length=total_length,
                                                 reverse_scheduled_sampling=reverse))
    frames, _ = model_inputs(model, B, torch.Generator().manual_seed(0))
    next_frames, _ = model(frames.float(), mask, return_loss=False)
    assert next_frames.shape[1] == total_length - 1
    with pytest.raises(ValueError, match="input_length"):
        pknn.evaluation_mask(B, total_length, total_length, reverse_scheduled_sampling=bool(reverse))


def test_schedule_sampling():
    eta, mask = pknn.schedule_sampling(1.0, 1, 3000, 10, 20, sampling_changing_rate=0.25)
    assert eta == 0.75 and mask.shape == (3000, 9)
    assert abs(mask.mean().item() - 0.75) < 0.02
    eta, mask = pknn.schedule_sampling(0.5, 60000, 4, 10, 20)
    assert eta == 0.0 and not mask.any()
    eta, mask = pknn.schedule_sampling(0.5, 1, 4, 10, 20, scheduled_sampling=False)
    assert eta == 0.0 and mask.shape == (4, 9) and not mask.any()


def test_reshape_patch():
    B, T, H, W, C, p = 2, 3, 6, 4, 3, 2
    frames = torch.randn(B, T, H, W, C)
    patches = pknn.reshape_patch(frames, p)
    assert patches.shape == (B, T, H // p, W // p, p * p * C)
    for y in range(H):
        for x in range(W):
            channels = patches[:, :, y // p, x // p, ((y % p) * p + x % p) * C:((y % p) * p + x % p + 1) * C]
            assert torch.equal(channels, frames[:, :, y, x])
    assert torch.equal(pknn.reshape_patch_back(patches, p), frames)
    with pytest.raises(ValueError, match="patch_size"):
        pknn.reshape_patch(frames, 4)


def test_both_conv_layouts_agree():
    """On a CPU the recurrence runs channels-last (weights converted once per sequence); the
    contiguous layout (the GPU's) must give the same results and gradients."""
    _, ours = make_pair("predrnn_v2", [4, 4], thuml_configs(layer_norm=1))
    ours.double()
    frames, mask = model_inputs(ours, 2, torch.Generator().manual_seed(0))
    peer_mask = pknn.expand_mask(mask, 4, 4, 4)
    results = []
    for layout in (True, False):
        ours.zero_grad()
        next_frames, loss = ours(frames, peer_mask, _channels_last=layout)
        loss.backward()
        results.append((next_frames, loss, [p.grad.clone() for p in ours.parameters()]))
        assert all(p.grad.is_contiguous() for p in ours.parameters())
    (f1, l1, g1), (f2, l2, g2) = results
    torch.testing.assert_close(f1, f2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(l1, l2, rtol=1e-12, atol=1e-12)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("layer_norm", [0, 1])
def test_merged_conv_o_and_last_built_once_per_sequence(backend, monkeypatch, layer_norm):
    """The GPU path (conv_o and conv_last as one conv on a merged weight), forced on this device:
    the same loss and gradients as the peer, the merged weight built once per cell per forward
    (not per step: each step's copy was saved by its conv), and a second iteration after an
    optimizer step, or a second forward before any backward (gradient accumulation), gets a fresh
    weight, not one whose graph is gone."""
    from predkern.nn import stlstm_cell

    if backend == "triton":
        pytest.skip("the merged weight is the model's, the same on every backend; 57 s interpreted")
    builds = []
    build = stlstm_cell._build_merged_weight
    monkeypatch.setattr(stlstm_cell, "_merges_convs", lambda mem: True)
    monkeypatch.setattr(stlstm_cell, "_build_merged_weight",
                        lambda cell, dtype: builds.append(cell) or build(cell, dtype))
    configs = thuml_configs(reverse_scheduled_sampling=1, layer_norm=layer_norm, total_length=6)
    peer, ours = make_pair("predrnn_v2", [4, 4], configs)
    compare_models(backend, peer, ours, torch.float64, 1e-11)
    steps = configs.total_length - 1
    assert len(builds) == 2 * 2, f"{len(builds)} merged weights built for 2 cells x 2 forwards of {steps} steps"
    assert all(not cell.__dict__.get("_predkern_merged_weight") for cell in ours.cell_list)

    device = backend_device(backend)
    frames, mask = model_inputs(ours, 2, torch.Generator().manual_seed(1))
    frames, mask = frames.to(device), mask.to(device)
    opt = torch.optim.SGD(ours.parameters(), lr=0.1)
    with backends.use(backend):
        for _ in range(2):  # two iterations
            opt.zero_grad()
            ours(frames, mask)[1].backward()
            opt.step()
        opt.zero_grad()
        for _ in range(2):  # gradient accumulation
            ours(frames, mask)[1].backward()
    accumulated = {n: p.grad.clone() for n, p in ours.named_parameters()}
    monkeypatch.setattr(stlstm_cell, "_merges_convs", lambda mem: False)
    ours.zero_grad()
    with backends.use(backend):
        for _ in range(2):
            ours(frames, mask)[1].backward()
    for name, p in ours.named_parameters():
        assert_close(f"accumulated grad {name}", p.grad, accumulated[name], 1e-11)

    # under autocast the merged weight is built once in the autocast dtype, as autocast casts a leaf
    if backend == "cpu":
        monkeypatch.setattr(stlstm_cell, "_merges_convs", lambda mem: True)
        monkeypatch.setattr(stlstm_cell, "_build_merged_weight",
                            lambda cell, dtype: builds.append(dtype) or build(cell, dtype))
        builds.clear()
        ours.float()
        with backends.use(backend), torch.autocast("cpu", dtype=torch.bfloat16):
            loss = ours(frames.float(), mask.float())[1]
        assert builds == [torch.bfloat16] * 2
        assert torch.isfinite(loss)



@pytest.mark.parametrize("kind", ["predrnn", "predrnn_v2", "convlstm"])
def test_autocast_bfloat16_no_worse_than_eager(backend, kind):
    """Under CPU bf16 autocast (bf16 convs, float32 cell states): the loss and next frames no worse
    than the peer's under the same autocast against float64 (SPEC.md 5), gradients finite and as
    close as eager's, and no more saved for the backward than the peer saves: the convs' weights
    are cast once per forward as autocast casts a leaf (not once per conv call, each cast saved),
    mem once for conv_o and conv_last, and the fused ops save their gates in bf16 as eager does."""
    if backend_device(backend) != "cpu":
        pytest.skip("CPU autocast")
    if backend == "triton":
        pytest.skip("bf16 under the Triton interpreter is slow; the op tests cover it")
    configs = thuml_configs(reverse_scheduled_sampling=1, img_width=16, total_length=6)
    peer, ours = make_pair(kind, [8, 8], configs)
    frames, mask = model_inputs(ours, 2, torch.Generator().manual_seed(5))
    with default_dtype(torch.float64):
        want = run(peer.double(), frames, pknn.expand_mask(mask, 8, 8, 4))
    peer.float(), ours.float()
    frames, mask = frames.float(), mask.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        (_, peer_loss), peer_saved = saved_bytes(lambda: peer(frames, pknn.expand_mask(mask, 8, 8, 4)))
        with backends.use(backend):
            (_, our_loss), our_saved = saved_bytes(lambda: ours(frames, mask))
        eager = run(peer, frames, pknn.expand_mask(mask, 8, 8, 4))
        got = run(ours, frames, mask, backend)
    assert our_saved <= peer_saved, f"saved for backward: {our_saved} bytes, the peer {peer_saved}"
    assert our_loss.item() == got[1].item() and peer_loss.item() == eager[1].item()

    def rel_err(x, ref):
        return (x.double() - ref).abs().max().item() / max(1e-12, ref.abs().max().item())

    for name, i in (("next_frames", 0), ("loss", 1)):
        err, err_eager = rel_err(got[i], want[i]), rel_err(eager[i], want[i])
        assert err <= 2 * err_eager + 1e-3, f"{name}: {err:.3g} vs eager {err_eager:.3g}"
    for name, g in want[2].items():
        if g is None:  # a peer's unused parameter (ConvLSTM's conv_o, conv_last)
            assert got[2][name] is None, name
            continue
        assert torch.isfinite(got[2][name]).all(), name
        err, err_eager = rel_err(got[2][name], g), rel_err(eager[2][name], g)
        assert err <= 2 * err_eager + 1e-2, f"grad {name}: {err:.3g} vs eager {err_eager:.3g}"
