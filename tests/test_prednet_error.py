"""prednet_error (PredNet error units) on every backend against the float64 reference
(SPEC.md sections 4 and 5)."""

import pytest
import torch

import predkern
from predkern import backends, reference
from conftest import backend_device
from oracle import (check, check_graph_behaves_as_eager, half_no_worse_than_eager,
                    outputs_and_grads, raises_naming_the_argument)
from tensors import LAYOUTS, expanded, float64_copy, rand

SPATIAL = {"2d": (5, 7), "nospatial": (), "1d": (11,), "3d": (2, 3, 5)}
OP = "prednet_error"
OPTIONS = {
    "layer0": dict(relu_a_hat=True, clip_max=1.0, return_mean=True),
    "upper": dict(relu_a_hat=True, clip_max=None),
    "target_first": dict(relu_a_hat=True, clip_max=0.5, first="target", return_mean=True),
    "no_relu": dict(relu_a_hat=False, clip_max=None, first="target"),
    "no_relu_clip": dict(relu_a_hat=False, clip_max=-0.25, return_mean=True),
}


def inputs(N=2, C=3, spatial=(5, 7), dtype=torch.float32, device="cpu", layout="contiguous"):
    S = tuple(spatial)
    x = {"a": rand((N, C, *S), dtype, device, layout), "a_hat": rand((N, C, *S), dtype, device, layout)}
    if layout == "strided":
        x["a"] = expanded((N, C, *S), dtype, device)
    return x


@pytest.mark.parametrize("opts", list(OPTIONS.values()), ids=list(OPTIONS))
@pytest.mark.parametrize("spatial", list(SPATIAL.values()), ids=list(SPATIAL))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(backend, spatial, layout, opts):
    x = inputs(spatial=spatial, device=backend_device(backend), layout=layout)
    got = check(backend, OP, x, opts)
    assert len([k for k in got if k.startswith("out")]) == (3 if opts.get("return_mean") else 2)
    if layout == "channels_last" and len(spatial) == 2:
        assert got["out0"].is_contiguous(memory_format=torch.channels_last), "e follows a's format"


def _one_element_on(t):
    """t's values at an address one element further on: the same sizes and strides, misaligned."""
    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    return buf[1:].as_strided(t.shape, t.stride()).copy_(t)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_aligned_and_misaligned_views_agree(backend, layout):
    """The fast dim a multiple of 4 (contiguous: 4x6 positions, channels_last: C=4), where the CUDA
    kernels read and write 4 elements per access, and the same values one element off, where they
    go one element at a time: both match the reference, and e_mean has the same bits (both paths
    add the same values in the same order; the CPU kernel does not depend on alignment)."""
    device = backend_device(backend)
    x = inputs(C=4, spatial=(4, 6), device=device, layout=layout)
    shifted = {k: _one_element_on(v) for k, v in x.items()}
    assert shifted["a"].stride() == x["a"].stride() and shifted["a"].data_ptr() % 16
    for opts in (OPTIONS["layer0"], OPTIONS["target_first"], OPTIONS["upper"]):
        got, got_shifted = check(backend, OP, x, opts), check(backend, OP, shifted, opts)
        if opts.get("return_mean") and backend in ("cpu", "cuda"):
            assert torch.equal(got["out2"], got_shifted["out2"])


@pytest.mark.parametrize("which", [(0,), (1,), (2,), (0, 2), (1, 2)],
                         ids=["e", "a_hat_out", "e_mean", "e_and_mean", "a_hat_out_and_mean"])
def test_gradient_of_some_outputs(backend, which):
    x = inputs(C=4, spatial=(3, 5), device=backend_device(backend))
    check(backend, OP, x, OPTIONS["layer0"], which=which)


def test_kinks_ties_and_nan(backend):
    """Values exactly at 0, at the clip, p == a, NaN and inf: eager autograd's masks (relu passes
    where its output is not <= 0, so NaN passes; the clip where its input <= clip_max)."""
    device = backend_device(backend)
    a = torch.tensor([[[0.0, 1.0, 1.0, 0.3, 2.0, -1.0, float("nan"), 0.2, 0.0, 0.5]]], dtype=torch.float64)
    a_hat = torch.tensor([[[0.0, 1.0, 3.0, 0.3, -0.0, float("nan"), 0.5, float("inf"), -2.0, 1.0]]],
                         dtype=torch.float64)
    for opts in OPTIONS.values():
        x = {"a": a.to(device, torch.float32), "a_hat": a_hat.to(device, torch.float32)}
        ref = outputs_and_grads(reference.prednet_error, float64_copy(x), opts)
        got = outputs_and_grads(predkern.prednet_error, x, opts, backend=backend)
        for k, r in ref.items():
            torch.testing.assert_close(got[k].double().cpu(), r, equal_nan=True, msg=lambda m: f"{opts} {k}: {m}")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_stores_round_as_torch(backend, dtype, layout):
    """Every float16 / bfloat16 bit pattern as a_hat, against a shuffled copy as a: a_hat_out (no
    relu, no clip) is a_hat itself, and e = relu(a_hat - a), relu(a - a_hat), one float32
    subtraction rounded once to the dtype, has the bits of torch's float32 expression rounded by
    .to(dtype), ties to even included; NaN stays NaN. Inner extents 21 (channels_last) and 1665
    leave a tail after whole vectors, which the CPU kernels convert a vector at once."""
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's float32 -> bfloat16 cast is not IEEE's (ties up, subnormals)")
    g = torch.Generator().manual_seed(0)
    n = 2 * 21 * 37 * 45
    bits = torch.arange(-2**15, 2**15, dtype=torch.int32)
    bits = torch.cat([bits, bits[torch.randint(0, 2**16, (n - 2**16,), generator=g)]])
    a_hat = bits.to(torch.int16).view(dtype).reshape(2, 21, 37, 45)
    a = a_hat.flatten()[torch.randperm(n, generator=g)].reshape(a_hat.shape)
    if layout == "channels_last":
        a, a_hat = (t.contiguous(memory_format=torch.channels_last) for t in (a, a_hat))
    with backends.use(backend):
        e, a_hat_out = predkern.prednet_error(a.to(device), a_hat.to(device), relu_a_hat=False)
    pos, neg = (a_hat.float() - a.float()).relu(), (a.float() - a_hat.float()).relu()
    want = {"e": torch.cat([pos, neg], dim=1).to(dtype), "a_hat_out": a_hat}
    for name, got in (("e", e.cpu()), ("a_hat_out", a_hat_out.cpu())):
        nan = want[name].isnan()
        assert torch.equal(got.isnan(), nan), f"{name}: NaN where torch has none, or none where it has"
        same = got.view(torch.int16) == want[name].view(torch.int16)
        assert (same | nan).all(), f"{name}: {(~same & ~nan).sum().item()} elements with other bits than torch's"


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32], ids=["fp16", "fp32"])
def test_tie_with_the_rounded_clip(backend, dtype):
    """A value equal to clip_max rounded to the tensor's dtype passes the clip's gradient, as in
    eager, which compares a tensor with a Python scalar in the tensor's dtype."""
    device = backend_device(backend)
    tie = torch.tensor(0.3, dtype=dtype).item()  # not 0.3: 0.30004883 in float16
    x = {"a": torch.zeros(1, 1, 3, dtype=dtype, device=device),
         "a_hat": torch.tensor([[[tie, 0.2, 0.5]]], dtype=dtype, device=device)}
    ref = outputs_and_grads(reference.prednet_error, x, {"clip_max": 0.3})
    got = outputs_and_grads(predkern.prednet_error, x, {"clip_max": 0.3}, backend=backend)
    assert ref["d_a_hat"][0, 0, 0] != 0, "eager passes the gradient at the tie"
    for k, r in ref.items():
        torch.testing.assert_close(got[k], r, msg=lambda m: f"{k}: {m}")


def test_infinite_gradient_on_a_closed_path_gives_zero(backend):
    device = backend_device(backend)
    x = {"a": torch.tensor([[[1.0, 0.0]]], device=device), "a_hat": torch.tensor([[[0.5, 2.0]]], device=device)}
    leaves = {k: v.requires_grad_(True) for k, v in x.items()}
    with backends.use(backend):
        e, _ = predkern.prednet_error(**leaves, clip_max=1.0)
    grad_e = torch.full_like(e, float("inf"))
    grad_e[:, 0] = 1.0  # relu(p - a) is closed at element 0 (p < a) only through its inf partner
    ga, gah = torch.autograd.grad(e, list(leaves.values()), grad_e)
    ref_a, ref_ah = torch.autograd.grad(reference.prednet_error(**leaves, clip_max=1.0)[0],
                                        list(leaves.values()), grad_e)
    torch.testing.assert_close(ga, ref_a, equal_nan=True)
    torch.testing.assert_close(gah, ref_ah, equal_nan=True)


def test_outputs_never_alias_inputs(backend):
    x = inputs(device=backend_device(backend))
    with backends.use(backend):
        e, a_hat_out = predkern.prednet_error(**x, relu_a_hat=False)
    assert torch.equal(a_hat_out, x["a_hat"]) and a_hat_out.data_ptr() != x["a_hat"].data_ptr()


def test_mean_same_bits_every_run(backend):
    x = inputs(N=3, C=5, spatial=(17, 19), device=backend_device(backend))
    runs = [outputs_and_grads(predkern.prednet_error, x, OPTIONS["layer0"], backend=backend) for _ in range(3)]
    for other in runs[1:]:
        for k, v in runs[0].items():
            assert torch.equal(v, other[k]), k


def test_mean_of_a_long_row_keeps_its_digits(backend):
    """One sample of 2^25 positions in float32: e_mean within 1e-6 of float64. A float running
    sum per row had drifted by 4e-5 at 2^24 positions and by 43% at 2^30."""
    device = backend_device(backend)
    if backend == "triton" and device == "cpu":
        pytest.skip("too many programs for the Triton interpreter")
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 2**25, generator=gen).to(device)
    a_hat = torch.randn(1, 1, 2**25, generator=gen).to(device)
    with backends.use(backend):
        e_mean = predkern.prednet_error(a, a_hat, clip_max=1.0, return_mean=True)[2]
    want = (a_hat.double().clamp(0, 1) - a.double()).abs().mean() / 2
    assert abs(e_mean.item() - want.item()) <= 1e-6 * want.item(), (e_mean.item(), want.item())


def test_empty(backend):
    device = backend_device(backend)
    with backends.use(backend):
        e, p, m = predkern.prednet_error(**inputs(N=0, device=device), return_mean=True)
        assert e.shape == (0, 6, 5, 7) and p.shape == (0, 3, 5, 7) and m.shape == (0,)
        e, p, m = predkern.prednet_error(**inputs(spatial=(0, 4), device=device), return_mean=True)
    assert e.shape == (2, 6, 0, 4) and p.shape == (2, 3, 0, 4)
    assert m.shape == (2,) and torch.isnan(m).all(), "a mean over nothing is NaN, as torch.mean"


def test_gradcheck(backend):
    """Inputs kept 0.05 away from every kink (0, the clip, p == a), where gradcheck's finite
    differences would straddle a jump."""
    device = backend_device(backend)
    gen = torch.Generator().manual_seed(3)
    a_hat = torch.rand(2, 3, 3, 2, generator=gen, dtype=torch.float64) * 0.8 + 0.1   # in (0.1, 0.9)
    a_hat[0, 0] = -a_hat[0, 0]                                                     # relu closed
    a_hat[1, 0] += 1.0                                                             # clipped
    sign = torch.where(torch.rand(a_hat.shape, generator=gen) < 0.5, -1.0, 1.0).double()
    a = a_hat.clamp(0, 1) + sign * (0.05 + torch.rand(a_hat.shape, generator=gen, dtype=torch.float64))

    def fn(a, a_hat):
        with backends.use(backend):
            return predkern.prednet_error(a, a_hat, clip_max=1.0, return_mean=True)

    leaves = [a.to(device).requires_grad_(True), a_hat.to(device).requires_grad_(True)]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_no_worse_than_eager(backend, dtype):
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    x = inputs(C=8, spatial=(6, 6), dtype=dtype, device=device)
    half_no_worse_than_eager(backend, OP, x, OPTIONS["layer0"])


def test_inputs_are_not_modified(backend):
    x = inputs(device=backend_device(backend))
    before = {k: v.clone() for k, v in x.items()}
    outputs_and_grads(predkern.prednet_error, x, OPTIONS["layer0"], backend=backend)
    for k, v in before.items():
        assert torch.equal(x[k], v), k


def _bad_cases():
    ok = inputs(spatial=(4, 4))
    yield "a_hat", dict(ok, a_hat=torch.randn(2, 3, 4, 5)), ValueError, "shape"
    yield "a_hat", dict(ok, a_hat=torch.randn(2, 3, 16)), ValueError, "shape"
    yield "first", dict(ok, first="prediction"), ValueError, "'pred', 'target'"
    yield "clip_max", dict(ok, clip_max="1"), TypeError, "float"
    yield "relu_a_hat", dict(ok, relu_a_hat=1), TypeError, "bool"
    yield "return_mean", dict(ok, return_mean=None), TypeError, "bool"


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: f"{c[0]}-{c[3]}")
def test_bad_input_raises_naming_the_argument(backend, case):
    raises_naming_the_argument(backend, predkern.prednet_error, case, backend_device(backend))


@pytest.mark.parametrize("opts", [{}, {"return_mean": True}], ids=str)
def test_graph_behaves_as_eager_autograd(backend, opts):
    # eager's own saves leave out some inputs the fused op saves
    saved = () if backend == "reference" else ("a", "a_hat")
    x = inputs(device=backend_device(backend), dtype=torch.float64)
    check_graph_behaves_as_eager(backend, OP, x, opts, saved)
