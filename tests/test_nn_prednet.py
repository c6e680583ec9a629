"""predkern.nn.prednet.PredNet against a plain PyTorch PredNet written from coxlab/prednet's
equations (prednet.py, kitti_train.py; SPEC.md sections 4 and 6; predkern/bench/plain_prednet.py,
which imports nothing from predkern and is also the benchmark's baseline): its state_dict loads
with strict=True; outputs, loss and every gradient match, float64 and float32, on every backend."""
import pytest
import torch

from predkern import backends
from predkern.bench.plain_prednet import PlainPredNet, plain_loss
from predkern.nn.prednet import PredNet, prednet_loss
from conftest import backend_device


CONFIG = dict(stack=(2, 3, 4), R=(3, 2, 4), A_filt=(3, 1), Ahat_filt=(3, 3, 1), R_filt=(3, 5, 3))


def make_pair(pixel_max=0.5, extrap_start_time=None, output_mode="all", config=CONFIG):
    plain = PlainPredNet(*config.values(), pixel_max=pixel_max, extrap_start_time=extrap_start_time)
    with torch.no_grad():  # non-zero biases, gates both inside and outside hard_sigmoid's linear part
        for p in plain.parameters():
            p.normal_(0.0, 0.4)
    ours = PredNet(*config.values(), pixel_max=pixel_max, output_mode=output_mode,
                   extrap_start_time=extrap_start_time)
    ours.load_state_dict(plain.state_dict(), strict=True)
    return plain, ours


def max_rel_err(got, want):
    scale = max(want.abs().max().item(), 1e-30)
    return (got.double().cpu() - want.double().cpu()).abs().max().item() / scale


def run_and_grad(module, frames, out_fn, layer_weights, backend=None):
    """Predictions, errors, loss and the gradients of the frames and of every parameter (by name)
    of loss + a random projection of the predictions."""
    x = frames.clone().requires_grad_(True)
    if backend is None:
        pred, err = out_fn(module, x)
        loss = plain_loss(err, layer_weights)
    else:
        with backends.use(backend):
            pred, err = out_fn(module, x)
            loss = prednet_loss(err, layer_weights)
    proj = torch.randn(pred.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(pred)
    names, params = zip(*module.named_parameters())
    grads = torch.autograd.grad(loss + (pred * proj).sum(), (x, *params))
    return {"prediction": pred, "error": err, "loss": loss, "d_frames": grads[0],
            **{"d_" + n: g for n, g in zip(names, grads[1:])}}


def plain_out(module, x):
    out = module(x)
    return torch.stack(out["prediction"], 1), torch.stack(out["error"], 1)


def ours_out(module, x):
    return module(x)


def compare_to_plain(backend, dtype, rel, plain, ours, frames, layer_weights):
    device = backend_device(backend)
    want = run_and_grad(plain.double(), frames.double(), plain_out, layer_weights)
    got = run_and_grad(ours.to(device, dtype), frames.to(device, dtype), ours_out, layer_weights, backend)
    assert want.keys() == got.keys()
    # The parameters' gradient is judged as one vector: a bias gradient is a sum over batch, space and
    # steps that cancels to well below the terms its rounding comes from, so its own max is no scale.
    param_scale = max(w.abs().max().item() for k, w in want.items() if k.startswith("d_conv"))
    for k, w in want.items():
        assert got[k].shape == w.shape and got[k].dtype == dtype, k
        scale = param_scale if k.startswith("d_conv") else w.abs().max().item()
        err = (got[k].double().cpu() - w).abs().max().item() / scale
        assert err <= rel, f"{k}: {err:.3g} x scale > {rel}"
    return want


DTYPES = [(torch.float64, 1e-12), (torch.float32, 1e-5)]


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
def test_matches_plain_prednet(backend, dtype, rel):
    plain, ours = make_pair()
    frames = torch.rand(2, 4, 2, 8, 12)  # non-square frames, 3 layers
    want = compare_to_plain(backend, dtype, rel, plain, ours, frames, [1.0, 0.1, 0.1])
    # the case exercises what it should: clipping at layer 0 and both sides of hard_sigmoid's clamp
    assert (want["prediction"] == 0.5).any() and (want["prediction"] < 0.5).any()
    assert (want["prediction"][:, 1:] != 0).any()


@pytest.mark.parametrize("dtype,rel", DTYPES, ids=["fp64", "fp32"])
def test_extrapolation_matches_plain(backend, dtype, rel):
    plain, ours = make_pair(pixel_max=1.0, extrap_start_time=2)
    frames = torch.rand(2, 4, 2, 8, 4)
    compare_to_plain(backend, dtype, rel, plain, ours, frames, [1.0, 0.0, 0.0])
    # from step 2 on the frames are not read: changing them changes nothing
    with backends.use(backend), torch.no_grad():
        device = backend_device(backend)
        x = frames.to(device, dtype)
        y = x.clone()
        y[:, 2:] = torch.rand_like(y[:, 2:])
        for a, b in zip(ours(x), ours(y)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("layer_weights", ["L_0", "L_all"])
def test_layer_weights_match_kitti_train(layer_weights):
    """On the model (4 layers, as kitti_train.py) and on hand-made errors."""
    config = dict(stack=(1, 2, 2, 3), R=(2, 2, 2, 3), A_filt=(3, 3, 3), Ahat_filt=(3, 3, 3, 3),
                  R_filt=(3, 3, 3, 3))
    plain, ours = make_pair(output_mode="error", config=config)
    frames = torch.rand(2, 5, 1, 8, 8, dtype=torch.float64)
    kitti = {"L_0": [1.0, 0.0, 0.0, 0.0], "L_all": [1.0, 0.1, 0.1, 0.1]}[layer_weights]
    want = plain_loss(torch.stack(plain.double()(frames)["error"], 1), kitti)
    got = prednet_loss(ours.double()(frames), layer_weights)
    assert abs(got.item() - want.item()) <= 1e-12 * want.item()
    errors = torch.arange(1.0, 2 * 3 * 4 + 1, dtype=torch.float64).reshape(2, 3, 4)  # (B=2, T=3, L=4)
    by_hand = {"L_0": ((5 + 9) / 2 + (17 + 21) / 2) / 2,
               "L_all": ((5 + 9 + 0.1 * (6 + 7 + 8 + 10 + 11 + 12)) / 2
                         + (17 + 21 + 0.1 * (18 + 19 + 20 + 22 + 23 + 24)) / 2) / 2}
    assert prednet_loss(errors, layer_weights).item() == pytest.approx(by_hand[layer_weights], rel=1e-14)
    assert prednet_loss(errors, kitti).item() == pytest.approx(by_hand[layer_weights], rel=1e-14)
    custom = prednet_loss(errors, [0.0, 1.0, 0.0, 0.0], time_weights=[1.0, 0.0, 2.0])
    assert custom.item() == pytest.approx(((2 + 2 * 10) + (14 + 2 * 22)) / 2, rel=1e-14)


def test_layer_units_and_prediction_mode():
    """output_mode "prediction" and coxlab's R/E/A/Ahat + layer number."""
    plain, _ = make_pair()
    plain.double()
    frames = torch.rand(2, 3, 2, 8, 12, dtype=torch.float64)
    out = plain(frames)
    for mode in ("prediction", "R0", "E1", "A1", "A0", "Ahat0", "Ahat2", "R2"):
        ours = PredNet(*CONFIG.values(), pixel_max=0.5, output_mode=mode).double()
        ours.load_state_dict(plain.state_dict(), strict=True)
        want = out["prediction"] if mode == "prediction" else [u[mode] for u in out["units"]]
        got = ours(frames)
        torch.testing.assert_close(got, torch.stack(want, 1), rtol=1e-12, atol=1e-14, msg=mode)
    # the prediction of step t is made before frame t is seen: frame t cannot change it
    ours = PredNet(*CONFIG.values(), pixel_max=0.5, output_mode="prediction").double()
    ours.load_state_dict(plain.state_dict())
    y = frames.clone()
    y[:, 2] = torch.rand_like(y[:, 2])
    torch.testing.assert_close(ours(frames), ours(y), rtol=0, atol=0)


def test_keras_init_and_keys():
    m = PredNet((3, 48, 96, 192), (3, 48, 96, 192), (3, 3, 3), (3, 3, 3, 3), (3, 3, 3, 3))  # kitti_train.py
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes["conv_i.0.weight"] == (3, 3 * 2 + 3 + 48, 3, 3) and shapes["conv_o.3.weight"] == (192, 576, 3, 3)
    assert shapes["conv_c.2.weight"] == (96, 2 * 96 + 96 + 192, 3, 3) and shapes["conv_f.1.bias"] == (48,)
    assert shapes["conv_ahat.3.weight"] == (192, 192, 3, 3) and shapes["conv_a.2.weight"] == (192, 192, 3, 3)
    assert "conv_a.3.weight" not in shapes and len(shapes) == 2 * (4 * 4 + 4 + 3)
    assert all((m.get_parameter(k) == 0).all() for k in shapes if k.endswith("bias"))
    w = m.conv_i[1].weight
    bound = (6 / (w[0].numel() + w[:, 0].numel())) ** 0.5  # Glorot uniform
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound


GOOD = dict(stack_sizes=(2, 3, 4), R_stack_sizes=(2, 3, 4), A_filt_sizes=(3, 3), Ahat_filt_sizes=(3, 3, 3),
            R_filt_sizes=(3, 3, 3))


@pytest.mark.parametrize("change,name", [
    (dict(R_stack_sizes=(2, 3)), "R_stack_sizes"),
    (dict(A_filt_sizes=(3, 3, 3)), "A_filt_sizes"),
    (dict(Ahat_filt_sizes=(3, 3)), "Ahat_filt_sizes"),
    (dict(R_filt_sizes=(3, 3, 3, 3)), "R_filt_sizes"),
    (dict(stack_sizes=(2, 0, 4)), "stack_sizes"),
    (dict(R_filt_sizes="333"), "R_filt_sizes"),
    (dict(output_mode="errors"), "output_mode"),
    (dict(output_mode="R3"), "output_mode"),
    (dict(extrap_start_time=-1), "extrap_start_time"),
])
def test_bad_config_raises(change, name):
    with pytest.raises(ValueError, match=f"`{name}`"):
        PredNet(**{**GOOD, **change})


@pytest.mark.parametrize("shape,words", [
    ((2, 3, 8, 8), "(B, T, C, H, W)"),
    ((1, 2, 2, 3, 8, 8), "(B, T, C, H, W)"),
    ((2, 3, 3, 8, 8), "stack_sizes[0] = 2"),
    ((2, 3, 2, 8, 10), "divisible by 2**(nb_layers - 1) = 4"),
    ((2, 3, 2, 6, 8), "divisible by 2**(nb_layers - 1) = 4"),
    ((2, 0, 2, 8, 8), "at least one time step"),
])
def test_bad_frames_raise(shape, words):
    m = PredNet(**GOOD)
    with pytest.raises(ValueError, match=r"`frames`.*" + words.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]").replace("*", r"\*")):
        m(torch.rand(shape))


def test_bad_frames_dtype_and_loss_arguments_raise():
    with pytest.raises(TypeError, match="`frames`"):
        PredNet(**GOOD)(torch.zeros(2, 3, 2, 8, 8, dtype=torch.int64))
    errors = torch.rand(2, 5, 3)
    for kwargs, name in [(dict(errors=errors[0]), "errors"), (dict(layer_weights="L_1"), "layer_weights"),
                         (dict(layer_weights=[1.0, 0.1]), "layer_weights"),
                         (dict(time_weights=[0.0, 1.0]), "time_weights"),
                         (dict(errors=errors[:, :1]), "time_weights")]:
        with pytest.raises(ValueError, match=f"`{name}`"):
            prednet_loss(**{"errors": errors, **kwargs})


@pytest.mark.parametrize("compiler", [
    "aot_eager",
    # Inductor's CPU codegen takes minutes here; aot_eager above checks the graph
    pytest.param("inductor", marks=pytest.mark.slow),
])
def test_compile_fullgraph_matches_eager(compiler):
    """forward + loss as one graph (fullgraph raises on a graph break) on the cpu backend; loss
    and gradients equal eager's."""
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    _, ours = make_pair(output_mode="error")
    frames = torch.rand(2, 3, 2, 8, 12, requires_grad=True)

    def step(frames):
        return prednet_loss(ours(frames), "L_all")

    torch._dynamo.reset()
    params = list(ours.parameters())
    with backends.use("cpu"):
        loss = torch.compile(step, fullgraph=True, backend=compiler)(frames)
        grads = torch.autograd.grad(loss, [frames, *params])
        loss_eager = step(frames)
        grads_eager = torch.autograd.grad(loss_eager, [frames, *params])
    torch.testing.assert_close(loss, loss_eager)
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge)


def test_autocast_bfloat16_no_worse_than_eager(backend):
    """Under CPU autocast (bf16 convs, float32 frames and cell states) the model runs, and its
    outputs and loss are no worse than the plain model's under the same autocast, against float64
    (SPEC.md 5). Gradients are only checked to exist, be finite and have eager's dtypes: bf16
    gradients of this recurrence through relu and clamp kinks are off by 10-100% of their scale in
    eager too, so a 2x-eager bound on them would judge noise."""
    if backend_device(backend) != "cpu":
        pytest.skip("CPU autocast")
    if backend == "triton":
        pytest.skip("bf16 under the Triton interpreter is slow; the op tests cover it")
    plain, ours = make_pair()
    frames = torch.rand(2, 3, 2, 8, 12)
    want = run_and_grad(plain.double(), frames.double(), plain_out, [1.0, 0.1, 0.1])
    plain.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = run_and_grad(plain, frames, plain_out, [1.0, 0.1, 0.1])
        got = run_and_grad(ours, frames, ours_out, [1.0, 0.1, 0.1], backend)
    # the prediction keeps the frames' float32 (eager's is bf16; relu and clip of a bf16 value are exact in both)
    assert got["prediction"].dtype == torch.float32
    for k in ("prediction", "error", "loss"):
        err_got, err_eager = max_rel_err(got[k], want[k]), max_rel_err(eager[k], want[k])
        assert err_got <= 2 * err_eager + 1e-3, f"{k}: {err_got:.3g} vs eager {err_eager:.3g}"
    for k in want:
        if k.startswith("d_"):
            assert got[k].dtype == eager[k].dtype and torch.isfinite(got[k]).all(), k
            assert (got[k] != 0).any() or not (want[k] != 0).any(), k  # relu may zero one layer's
