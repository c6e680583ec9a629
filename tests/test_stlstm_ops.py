"""stlstm_memory and stlstm_output (PredRNN ST-LSTM stages 1 and 2) on every backend against the
float64 reference (SPEC.md sections 2 and 5)."""
import pytest
import torch

import predkern
from predkern import backends, reference
from conftest import backend_device
from oracle import (check, check_graph_behaves_as_eager, half_no_worse_than_eager,
                    outputs_and_grads, raises_naming_the_argument, saved_bytes)
from tensors import LAYOUTS, expanded, float64_copy, max_error_over_scale, rand

SPATIAL = {"2d": (5, 7), "nospatial": (), "1d": (11,), "3d": (2, 3, 5)}


def memory_inputs(B=2, C=3, spatial=(5, 7), dtype=torch.float32, state_dtype=None, device="cpu",
                  layout="contiguous"):
    state_dtype = state_dtype or dtype
    S = tuple(spatial)
    x = {"x_cat": rand((B, 7 * C, *S), dtype, device, layout),
         "h_cat": rand((B, 4 * C, *S), dtype, device, layout),
         "m_cat": rand((B, 3 * C, *S), dtype, device, layout),
         "c": rand((B, C, *S), state_dtype, device, layout),
         "m": rand((B, C, *S), state_dtype, device, layout)}
    if layout == "strided":
        x["c"] = expanded((B, C, *S), state_dtype, device)
    return x


def output_inputs(B=2, C=3, spatial=(5, 7), dtype=torch.float32, device="cpu", layout="contiguous",
                  merged_conv=False):
    S = tuple(spatial)
    x = {"x_cat": rand((B, 7 * C, *S), dtype, device, layout),
         "h_cat": rand((B, 4 * C, *S), dtype, device, layout)}
    if merged_conv:  # conv_o and conv_last run as one conv: its two halves
        x["o_conv"], x["last_conv"] = rand((B, 2 * C, *S), dtype, device, layout).chunk(2, dim=1)
    else:
        x["o_conv"], x["last_conv"] = (rand((B, C, *S), dtype, device, layout) for _ in range(2))
    return x


# ---------------------------------------------------------------- stage 1

@pytest.mark.parametrize("spatial", list(SPATIAL.values()), ids=list(SPATIAL))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_memory_matches_reference(backend, spatial, layout):
    x = memory_inputs(spatial=spatial, device=backend_device(backend), layout=layout)
    got = check(backend, "stlstm_memory", x, {"forget_bias": 1.0})
    if layout == "channels_last" and len(spatial) == 2:
        assert got["out0"].is_contiguous(memory_format=torch.channels_last), "mem follows x_cat's format"


@pytest.mark.parametrize("which", [(0,), (1, 2), (1,)], ids=["mem_only", "deltas_only", "delta_c_only"])
def test_memory_gradient_of_some_outputs(backend, which):
    x = memory_inputs(C=4, spatial=(3, 5), device=backend_device(backend))
    check(backend, "stlstm_memory", x, {"forget_bias": 0.7}, which=which)


def test_memory_without_deltas(backend):
    x = memory_inputs(device=backend_device(backend))
    with backends.use(backend):
        mem, delta_c, delta_m = predkern.stlstm_memory(**x, return_deltas=False)
    assert delta_c is None and delta_m is None
    check(backend, "stlstm_memory", x, {"return_deltas": False})


def test_memory_writes_mem_directly(backend):
    """mem is one (B, 2C, ...) tensor holding c' then m'; no cat of two tensors."""
    x = memory_inputs(device=backend_device(backend))
    with backends.use(backend):
        mem, _, _ = predkern.stlstm_memory(**x)
    ref, _, _ = reference.stlstm_memory(**float64_copy(x))
    assert mem.shape == (2, 6, 5, 7) and mem._base is None
    assert max_error_over_scale(mem[:, :3], ref[:, :3]) < 1e-5
    assert max_error_over_scale(mem[:, 3:], ref[:, 3:]) < 1e-5


# ---------------------------------------------------------------- stage 2

@pytest.mark.parametrize("spatial", list(SPATIAL.values()), ids=list(SPATIAL))
@pytest.mark.parametrize("layout", LAYOUTS)
def test_output_matches_reference(backend, spatial, layout):
    x = output_inputs(spatial=spatial, device=backend_device(backend), layout=layout)
    check(backend, "stlstm_output", x)


def test_output_takes_halves_of_one_conv(backend):
    check(backend, "stlstm_output", output_inputs(device=backend_device(backend), merged_conv=True))


# ---------------------------------------------------------------- both

def test_empty(backend):
    device = backend_device(backend)
    for B, S in ((0, (4, 4)), (2, (0, 3))):
        with backends.use(backend):
            mem, dc, dm = predkern.stlstm_memory(**memory_inputs(B=B, spatial=S, device=device))
            h = predkern.stlstm_output(**output_inputs(B=B, spatial=S, device=device))
        assert mem.shape == (B, 6, *S) and dc.shape == dm.shape == h.shape == (B, 3, *S)


@pytest.mark.parametrize("op", ["stlstm_memory", "stlstm_output"])
def test_gradcheck(backend, op):
    device = backend_device(backend)
    make = memory_inputs if op == "stlstm_memory" else output_inputs
    B = 1 if backend == "triton" else 2  # gradcheck makes a call per input element: slow interpreted
    x = make(B=B, C=2, spatial=(3, 2), dtype=torch.float64, device=device)
    names = list(x)

    def fn(*ts):
        with backends.use(backend):
            out = getattr(predkern, op)(**dict(zip(names, ts)))
        return out

    assert torch.autograd.gradcheck(fn, [x[k].requires_grad_(True) for k in names], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,state", [(torch.float16, None), (torch.bfloat16, None),
                                         (torch.float16, torch.float32), (torch.bfloat16, torch.float32)],
                         ids=["fp16", "bf16", "fp16_fp32state", "bf16_fp32state"])
@pytest.mark.parametrize("op", ["stlstm_memory", "stlstm_output"])
def test_half_precision_no_worse_than_eager(backend, op, dtype, state):
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    if op == "stlstm_output" and state is not None:
        pytest.skip("stage 2 has no cell state")
    x = (memory_inputs(C=8, spatial=(6, 6), dtype=dtype, state_dtype=state, device=device)
         if op == "stlstm_memory" else output_inputs(C=8, spatial=(6, 6), dtype=dtype, device=device))
    half_no_worse_than_eager(backend, op, x)


@pytest.mark.parametrize("dtype,state", [(torch.float32, None), (torch.float16, None),
                                         (torch.bfloat16, torch.float32)], ids=["fp32", "fp16", "bf16_fp32state"])
def test_memory_saves_no_more_than_eager(backend, dtype, state):
    """Stage 1 saves its six gates in the gates' dtype, as eager keeps its activations, and c and
    m: no more bytes than eager autograd keeps, also under autocast's mix (float32 gates would
    double them there)."""
    device = backend_device(backend)
    x = {k: v.requires_grad_() for k, v in
         memory_inputs(C=8, spatial=(6, 6), dtype=dtype, state_dtype=state, device=device).items()}
    _, eager = saved_bytes(lambda: reference.stlstm_memory(**x))
    with backends.use(backend):
        _, ours = saved_bytes(lambda: predkern.stlstm_memory(**x))
    assert ours <= eager, f"{ours} bytes saved, eager {eager}"


def _bad_memory_cases():
    ok = memory_inputs(C=3, spatial=(4, 4))
    yield "x_cat", dict(ok, x_cat=torch.randn(2, 20, 4, 4)), ValueError, "multiple of"
    yield "h_cat", dict(ok, h_cat=torch.randn(2, 9, 4, 4)), ValueError, "shape"
    yield "m_cat", dict(ok, m_cat=torch.randn(2, 9, 4, 1)), ValueError, "shape"
    yield "c", dict(ok, c=torch.randn(2, 3, 1, 1)), ValueError, "shape"
    yield "forget_bias", dict(ok, forget_bias="1"), TypeError, "float"
    yield "return_deltas", dict(ok, return_deltas="no"), TypeError, "bool"


def _bad_output_cases():
    ok = output_inputs(C=3, spatial=(4, 4))
    yield "x_cat", dict(ok, x_cat=torch.randn(2, 20, 4, 4)), ValueError, "multiple of"
    yield "h_cat", dict(ok, h_cat=torch.randn(2, 12, 4, 5)), ValueError, "shape"
    yield "o_conv", dict(ok, o_conv=torch.randn(2, 3, 1, 1)), ValueError, "shape"
    yield "last_conv", dict(ok, last_conv=torch.randn(2, 3, 4, 4, dtype=torch.float16)), ValueError, "dtype"


@pytest.mark.parametrize("op,case", [("stlstm_memory", c) for c in _bad_memory_cases()]
                         + [("stlstm_output", c) for c in _bad_output_cases()],
                         ids=lambda v: v if isinstance(v, str) else v[0])
def test_bad_input_raises_naming_the_argument(backend, op, case):
    raises_naming_the_argument(backend, getattr(predkern, op), case, backend_device(backend))


def test_inputs_are_not_modified(backend):
    device = backend_device(backend)
    for op, x in (("stlstm_memory", memory_inputs(device=device)), ("stlstm_output", output_inputs(device=device))):
        before = {k: v.clone() for k, v in x.items()}
        outputs_and_grads(getattr(predkern, op), x, backend=backend)
        for k, v in before.items():
            assert torch.equal(x[k], v), f"{op}: {k} was modified"


def test_output_without_gradient_adds_no_nan(backend):
    """Eager autograd never runs the path of an output that got no gradient: an inf in c feeds
    only c' (f*c), so with gradients on the deltas alone every input gradient stays finite."""
    x = memory_inputs(C=2, spatial=(3,), device=backend_device(backend))
    x["c"][0, 0, 0] = float("inf")
    got = outputs_and_grads(predkern.stlstm_memory, x, which=(1, 2), backend=backend)
    ref = outputs_and_grads(reference.stlstm_memory, float64_copy(x), which=(1, 2))
    for k in ("d_x_cat", "d_h_cat", "d_m_cat", "d_c", "d_m"):
        assert torch.isfinite(got[k]).all(), k
        assert max_error_over_scale(got[k], ref[k]) < 1e-5, k


@pytest.mark.parametrize("op", ["stlstm_memory", "stlstm_output"])
def test_graph_behaves_as_eager_autograd(backend, op):
    make = memory_inputs if op == "stlstm_memory" else output_inputs
    check_graph_behaves_as_eager(backend, op, make(device=backend_device(backend), dtype=torch.float64),
                                 saved=("c", "m") if op == "stlstm_memory" else ())
