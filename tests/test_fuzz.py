"""Differential fuzzing (hypothesis) of every op on every backend present against the float64
reference: random shapes (0 and 1 sizes, odd sizes, no/1-D/2-D/3-D spatial), a layout per
tensor (contiguous, channels_last, sliced, expanded, transposed), dtypes (the autocast mix
included), option combinations, gradients of a random subset of the outputs, and NaN/Inf.

The number of examples comes from the hypothesis profile loaded in conftest.py: `ci` (default,
derandomized, small) or `long` (PREDKERN_FUZZ=long, for runs on a GPU)."""
import math

import pytest
import torch
from hypothesis import given, strategies as st

import predkern
from predkern import reference
from conftest import HAS_GPU, backend_device
from op_table import OPS
from oracle import HALF_ATOL_ROUNDINGS, outputs_and_grads
from tensors import VIEWS, laid_out

HALF = (torch.float16, torch.bfloat16)
REL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _dtypes(backend):
    if backend == "triton" and not HAS_GPU:
        return [torch.float32, torch.float64, torch.float16]  # the interpreter has no bfloat16
    return [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _options(op, draw):
    if op == "convlstm_gates":
        return dict(forget_bias=draw(st.sampled_from([0.0, 1.0, -0.5])),
                    gate_order=draw(st.sampled_from(reference.GATE_ORDERS)),
                    gate_act=draw(st.sampled_from(reference.GATE_ACTS)))
    if op == "stlstm_memory":
        return dict(forget_bias=draw(st.sampled_from([1.0, 0.0])), return_deltas=draw(st.booleans()))
    if op == "prednet_error":
        return dict(relu_a_hat=draw(st.booleans()), first=draw(st.sampled_from(["pred", "target"])),
                    clip_max=draw(st.sampled_from([None, 1.0, 0.25, -0.5])), return_mean=draw(st.booleans()))
    return {}


def _draw_case(op, backend, draw):
    B = draw(st.integers(0, 3), label="B")
    C = draw(st.integers(1, 5), label="C")
    spatial = tuple(draw(st.lists(st.integers(0, 6), max_size=3), label="spatial"))
    dtype = draw(st.sampled_from(_dtypes(backend)), label="dtype")
    state_dtype = draw(st.sampled_from([dtype, torch.float32]), label="state dtype") if dtype in HALF else dtype
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1), label="seed"))
    special = draw(st.sampled_from([None, None, None, math.nan, math.inf, -math.inf]), label="special")
    values = {}
    for arg in OPS[op]:
        if not arg.optional or draw(st.booleans(), label=f"with {arg.name}"):
            values[arg.name] = torch.randn(arg.shape(B, C, spatial), generator=gen, dtype=torch.float64) * 1.5
    if special is not None:
        name = draw(st.sampled_from(list(values)), label="special in")
        if values[name].numel():
            flat = draw(st.integers(0, values[name].numel() - 1), label="special at")
            values[name].view(-1)[flat] = special
    state = {arg.name: arg.state for arg in OPS[op]}
    x = {k: laid_out(v, draw(st.sampled_from(VIEWS), label=f"{k} view"),
                     state_dtype if state[k] else dtype, backend_device(backend)) for k, v in values.items()}
    if op == "stlstm_output" and draw(st.booleans(), label="o_conv, last_conv: halves of one conv"):
        x["o_conv"], x["last_conv"] = torch.cat([x["o_conv"], x["last_conv"]], 1).chunk(2, dim=1)
    opts = _options(op, draw)
    n_out = {"convlstm_gates": 2, "stlstm_memory": 3 if opts.get("return_deltas") else 1,
             "prednet_error": 3 if opts.get("return_mean") else 2}.get(op, 1)
    which = [k for k in range(n_out) if draw(st.booleans(), label=f"grad of output {k}")] or None
    return x, opts, which, dtype


def _summed_terms(op, x, opts, ref):
    """For gradients summed over broadcast dims (convlstm_gates' bias and peephole): the sum of
    the magnitudes of their terms, from the float64 reference. A half result whose terms cancel
    carries the rounding of its terms, not of itself; eager may round luckily, so 2x eager's
    error alone cannot bound it."""
    if op != "convlstm_gates" or "d_gates_x" not in ref:
        return {}
    dz, c = ref["d_gates_x"].abs(), x["c"].detach().double().cpu().abs()
    terms = {}
    if "d_bias" in ref:
        terms["d_bias"] = dz.sum([0, *range(2, dz.dim())])
    if "d_peephole" in ref:
        slot = [opts.get("gate_order", "ifgo").index(g) for g in "ifgo"]
        blocks = dz.chunk(4, dim=1)
        c_new = ref["out1"].abs()
        terms["d_peephole"] = torch.stack([(blocks[slot[0]] * c).sum(0), (blocks[slot[1]] * c).sum(0),
                                           (blocks[slot[3]] * c_new).sum(0)])
    return terms


def _assert_matches(got, ref, eager, dtype, what, summed_terms=None):
    """Same shapes, dtypes (eager's), NaN and Inf where the float64 reference has them; finite
    values within SPEC.md 5's tolerance: float32/64 by REL x scale, halves no worse than eager
    (where eager is finite: elsewhere its error is unbounded) plus HALF_ATOL_ROUNDINGS roundings of
    the output's scale, or of its summed terms (see _summed_terms)."""
    for k, r in ref.items():
        g = got[k].detach()
        assert g.shape == r.shape, f"{what} {k}: shape {tuple(g.shape)} != {tuple(r.shape)}"
        assert g.dtype == eager[k].dtype, f"{what} {k}: dtype {g.dtype} != eager's {eager[k].dtype}"
        g, e = g.double().cpu(), eager[k].detach().double().cpu()
        half = dtype in HALF
        nan_ok = r.isnan() | (e.isnan() & half)
        assert not (g.isnan() & ~nan_ok).any(), f"{what} {k}: NaN where the reference has none"
        assert g[r.isnan()].isnan().all(), f"{what} {k}: no NaN where the reference has one"
        inf = r.isinf() & ~(half & (e != r))  # halves: the reference's Inf where eager has it too
        assert torch.equal(g[inf], r[inf]), f"{what} {k}: Inf differs from the reference"
        fin = r.isfinite() & ~(g.isnan() & nan_ok)  # a half NaN where eager has one is checked above
        if not fin.any():
            continue
        scale = max(1.0, r[fin].abs().max().item())
        err = (g[fin] - r[fin]).abs()
        if half:
            eager_err = (e[fin] - r[fin]).abs().nan_to_num(nan=math.inf)
            summed = (summed_terms or {}).get(k)
            # a NaN or Inf term under a finite result lies on a path the op does not take
            rounded = scale if summed is None else torch.clamp(summed[fin].nan_to_num(0, 0), min=scale)
            bound = 2 * eager_err + HALF_ATOL_ROUNDINGS * torch.finfo(dtype).eps * rounded
        else:
            bound = torch.full_like(err, REL[dtype] * scale)
        bad = ~(err <= bound)
        assert not bad.any(), (f"{what} {k}: {bad.sum().item()} of {bad.numel()} elements off, "
                               f"worst error {err.max().item():.3g} at scale {scale:.3g}")


@pytest.mark.parametrize("op", list(OPS))
@given(data=st.data())
def test_matches_float64_reference(backend, op, data):
    x, opts, which, dtype = _draw_case(op, backend, data.draw)
    before = {k: v.clone() for k, v in x.items()}
    fn = getattr(reference, op)
    ref = outputs_and_grads(fn, {k: v.detach().cpu().double() for k, v in x.items()}, opts, which)
    eager = outputs_and_grads(fn, x, opts, which)
    got = outputs_and_grads(getattr(predkern, op), x, opts, which, backend)
    _assert_matches(got, ref, eager, dtype, f"{op} on {backend}", _summed_terms(op, x, opts, ref))
    for k, v in before.items():
        torch.testing.assert_close(x[k], v, rtol=0, atol=0, equal_nan=True,
                                   msg=f"{op} on {backend}: input {k} was written")
