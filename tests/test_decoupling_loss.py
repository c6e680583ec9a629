"""decoupling_loss (PredRNN-V2 memory decoupling) on every backend against the float64 reference,
the official expression (SPEC.md sections 3 and 5)."""
import math

import pytest
import torch

import predkern
from predkern import backends, reference
from conftest import backend_device
from oracle import (check, check_graph_behaves_as_eager, half_no_worse_than_eager,
                    outputs_and_grads, raises_naming_the_argument)
from tensors import LAYOUTS, expanded, float64_copy, rand

SPATIAL = {"2d": (5, 7), "nospatial": (), "1d": (11,), "3d": (2, 3, 5)}
OP = "decoupling_loss"


def inputs(N=3, C=5, spatial=(5, 7), dtype=torch.float32, device="cpu", layout="contiguous"):
    S = tuple(spatial)
    x = {"delta_c": rand((N, C, *S), dtype, device, layout), "delta_m": rand((N, C, *S), dtype, device, layout)}
    if layout == "strided":
        x["delta_m"] = expanded((N, C, *S), dtype, device)
    return x


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("spatial", list(SPATIAL.values()), ids=list(SPATIAL))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(backend, spatial, layout, dtype):
    x = inputs(spatial=spatial, dtype=dtype, device=backend_device(backend), layout=layout)
    got = check(backend, OP, x, rel=1e-5 if dtype == torch.float32 else 1e-12)
    assert got["out0"].shape == () and got["out0"].dtype == dtype
    if layout == "channels_last" and len(spatial) == 2:
        assert got["d_delta_c"].is_contiguous(memory_format=torch.channels_last), "grads follow the input"


def _hard_rows(dtype, device):
    """Rows that are zero, or scaled far below F.normalize's 1e-12 clamp, or huge."""
    x = inputs(N=4, C=6, spatial=(4, 5), dtype=torch.float64)
    c, m = x["delta_c"], x["delta_m"]
    c[0, 0] = 0                       # zero row in delta_c
    m[0, 1] = 0                       # zero row in delta_m
    c[0, 2] = 0
    m[0, 2] = 0                       # both zero
    c[1, 0] *= 1e-20                  # below the 1e-12 clamp: the value is the true cosine
    m[1, 1] *= 1e-20
    c[1, 2] *= 1e-14
    m[1, 2] *= 1e-16
    c[2, 0] *= 1e20                   # sum of squares 1e40 overflows float32
    m[2, 1] *= 1e20
    c[2, 2] *= 1e20
    m[2, 2] *= 1e-20
    return {k: v.to(device, dtype) for k, v in x.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_zero_tiny_and_huge_rows(backend, dtype):
    """float32 values of 1e-20 and 1e20 give the float64 reference's value and gradients."""
    if backend == "reference" and dtype == torch.float32:
        pytest.skip("the reference is the official expression, whose float32 sums of squares "
                    "overflow at 1e20 and go subnormal at 1e-20; the fused kernels sum in double")
    x = _hard_rows(dtype, backend_device(backend))
    ref = outputs_and_grads(reference.decoupling_loss, float64_copy(x))
    assert all(torch.isfinite(v).all() for v in ref.values()), "the reference stays finite here"
    got = outputs_and_grads(predkern.decoupling_loss, x, backend=backend)
    for k, r in ref.items():
        g = got[k].detach().double().cpu()
        assert torch.isfinite(g).all(), k
        # gradients of rows at 1e-20 are ~1e20 and of rows at 1e20 ~1e-20: compare row by row
        rows_r, rows_g = (t.reshape(-1, 4 * 5 if t.dim() else 1) for t in (r, g))  # a row per (n, c)
        scale = rows_r.abs().amax(dim=1, keepdim=True).clamp_min(1e-300)
        err = ((rows_g - rows_r).abs() / scale).max().item()
        assert err <= (1e-5 if dtype == torch.float32 else 1e-12), f"{k}: relative error {err:.3g}"


def test_parallel_and_opposite_rows(backend):
    x = inputs(N=2, C=3, dtype=torch.float64, device=backend_device(backend))
    x["delta_m"] = torch.cat([2.5 * x["delta_c"][:1], -0.1 * x["delta_c"][1:]])
    with backends.use(backend):
        loss = predkern.decoupling_loss(**x)
    assert abs(loss.item() - 1.0) < 1e-14


@pytest.mark.parametrize("C,S", [(1, 3), (96, 2)], ids=["one-channel", "channel-tiles"])
def test_many_rows(backend, C, S):
    """5000 samples of one channel, or of 96: a mean over many rows (on CUDA, many rows per thread
    of its one-block mean)."""
    if backend == "triton" and backend_device(backend) == "cpu":
        pytest.skip("minutes in the Triton interpreter; the stacked-terms test covers its mean")
    check(backend, OP, inputs(N=5000, C=C, spatial=(S,), device=backend_device(backend)), rel=1e-5)


def test_same_bits_every_run(backend):
    device = backend_device(backend)
    x = inputs(N=4, C=7, spatial=(9, 13), device=device)
    runs = [outputs_and_grads(predkern.decoupling_loss, x, backend=backend) for _ in range(3)]
    for other in runs[1:]:
        for k, v in runs[0].items():
            assert torch.equal(v, other[k]), f"{k} differs between runs"


def test_same_bits_for_any_thread_count():
    """The CPU kernel sums each row and then the rows in a fixed order, not per thread."""
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    x = inputs(N=8, C=16, spatial=(16, 16))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = outputs_and_grads(predkern.decoupling_loss, x, backend="cpu")
        torch.set_num_threads(max(2, threads))
        many = outputs_and_grads(predkern.decoupling_loss, x, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    for k, v in one.items():
        assert torch.equal(v, many[k]), k


def test_stacked_terms_equal_the_mean_of_the_terms(backend):
    """The official model averages (T-1)*L per-step losses; with equal N stacking them is the same."""
    device = backend_device(backend)
    terms = [inputs(N=2, C=3, spatial=(4, 4), dtype=torch.float64, device=device) for _ in range(5)]
    stacked = {k: torch.cat([t[k] for t in terms]) for k in terms[0]}
    with backends.use(backend):
        one_call = predkern.decoupling_loss(**stacked)
        per_term = torch.stack([predkern.decoupling_loss(**t) for t in terms]).mean()
    torch.testing.assert_close(one_call, per_term, rtol=1e-13, atol=0)


def test_empty(backend):
    device = backend_device(backend)
    x = inputs(N=0, device=device)
    got = outputs_and_grads(predkern.decoupling_loss, x, backend=backend)
    assert math.isnan(got["out0"].item()), "a mean over no rows is NaN, as torch.mean"
    assert got["d_delta_c"].shape == x["delta_c"].shape
    x = inputs(spatial=(0, 3), device=device)  # rows of zero length are zero vectors: cos 0
    with backends.use(backend):
        loss = predkern.decoupling_loss(**x)
    assert loss.item() == reference.decoupling_loss(**float64_copy(x)).item() == 0.0


def test_gradcheck(backend):
    x = inputs(N=2, C=3, spatial=(3, 2), dtype=torch.float64, device=backend_device(backend))
    x["delta_m"][0, 1] = 0  # a zero row: its gradient is 0, not NaN

    def fn(delta_c, delta_m):
        with backends.use(backend):
            return predkern.decoupling_loss(delta_c, delta_m)

    assert torch.autograd.gradcheck(fn, [v.requires_grad_(True) for v in x.values()], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_precision_no_worse_than_eager(backend, dtype):
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    half_no_worse_than_eager(backend, OP, inputs(C=8, spatial=(6, 6), dtype=dtype, device=device))


def test_inputs_are_not_modified(backend):
    x = inputs(device=backend_device(backend))
    before = {k: v.clone() for k, v in x.items()}
    outputs_and_grads(predkern.decoupling_loss, x, backend=backend)
    for k, v in before.items():
        assert torch.equal(x[k], v), k


def _bad_cases():
    ok = inputs(spatial=(4, 4))
    yield "delta_m", dict(ok, delta_m=torch.randn(3, 5, 4, 5)), ValueError, "shape"
    yield "delta_m", dict(ok, delta_m=torch.randn(3, 5, 16)), ValueError, "shape"


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(backend, case):
    raises_naming_the_argument(backend, predkern.decoupling_loss, case, backend_device(backend))


@pytest.mark.gpu
def test_backward_op_refuses_row_coefs_on_another_device():
    """The backward op's saved row coefficients are dereferenced by its kernel: on another device
    than the deltas they raise, naming the argument, rather than fault."""
    if backends.unavailable_reason("cuda", "cuda"):
        pytest.skip(backends.unavailable_reason("cuda", "cuda"))
    op = torch.ops.predkern.decoupling_loss_backward
    dc, dm = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 4, 5)
    coefs = torch.zeros(6, 4, dtype=torch.float64)
    for where_deltas, where_coefs in (("cuda", "cpu"), ("cpu", "cuda")):
        with pytest.raises(ValueError, match="`row_coefs`.*device"):
            op(torch.ones((), device=where_deltas), dc.to(where_deltas), dm.to(where_deltas), coefs.to(where_coefs))


@pytest.mark.parametrize("opts", [{}], ids=str)
def test_graph_behaves_as_eager_autograd(backend, opts):
    # eager's own saves leave out some inputs the fused op saves
    saved = () if backend == "reference" else ("delta_c", "delta_m")
    x = inputs(device=backend_device(backend), dtype=torch.float64)
    check_graph_behaves_as_eager(backend, OP, x, opts, saved)
