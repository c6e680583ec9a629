"""convlstm_gates on every backend against the float64 reference (SPEC.md sections 1 and 5)."""

import pytest
import torch

import predkern
from predkern import backends, reference
import tensors
from conftest import backend_device
from oracle import check_graph_behaves_as_eager, raises_naming_the_argument, saved_bytes
from tensors import float64_copy

HALF_TYPES = (torch.float16, torch.bfloat16)


def run(backend, *args, **kwargs):
    with backends.use(backend):
        return predkern.convlstm_gates(*args, **kwargs)


def make_inputs(B=2, C=3, spatial=(5, 7), *, gates_h=True, bias=True, peephole=True,
                dtype=torch.float64, state_dtype=None, device="cpu", layout="contiguous"):
    """Random inputs; `layout` is contiguous, channels_last, or strided (views cut from wider
    tensors: a channel slice, every other spatial column, and a batch-expanded c)."""
    state_dtype = state_dtype or dtype
    shape_g, shape_c = (B, 4 * C, *spatial), (B, C, *spatial)

    def rand(shape, dt, scale=1.5):
        return tensors.rand(shape, dt, device, layout, scale)

    x = {"gates_x": rand(shape_g, dtype), "c": rand(shape_c, state_dtype)}
    if layout == "strided":  # one c for the whole batch, as an expanded (stride 0) view
        x["c"] = tensors.expanded(shape_c, state_dtype, device)
    x["gates_h"] = rand(shape_g, dtype) if gates_h else None
    x["bias"] = (torch.randn(4 * C, dtype=torch.float64) * 0.5).to(device, state_dtype) if bias else None
    x["peephole"] = rand((3, C, *spatial), state_dtype, 0.5) if peephole else None
    return x


TENSOR_ARGS = ("gates_x", "c", "gates_h", "bias", "peephole")


def outputs_and_grads(fn, x, opts, grads=("h", "c")):
    """Forward outputs and the gradients of every tensor input for random output grads
    (None for an output not in `grads`). Leaves keep the inputs' strides (detach is a view)."""
    leaves = {k: (v.detach().requires_grad_(True) if v is not None else None) for k, v in x.items()}
    h, c_new = fn(**leaves, **opts)
    gen = torch.Generator().manual_seed(1)
    g_h = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(h) if "h" in grads else None
    g_c = torch.randn(c_new.shape, generator=gen, dtype=torch.float64).to(c_new) if "c" in grads else None
    outs = [t for t, g in ((h, g_h), (c_new, g_c)) if g is not None]
    names = [k for k in TENSOR_ARGS if leaves[k] is not None]
    dx = torch.autograd.grad(outs, [leaves[k] for k in names], [g for g in (g_h, g_c) if g is not None])
    return {"h": h, "c_new": c_new, **{"d_" + n: d for n, d in zip(names, dx)}}


def assert_close_to_ref(got, ref, rel=1e-5):
    """float32 max abs error <= rel x the output's scale (SPEC.md section 5)."""
    for k, r in ref.items():
        g = got[k]
        assert g.shape == r.shape, k
        if not r.numel():
            continue
        scale = max(1.0, r.abs().max().item())
        err = (g.detach().double().cpu() - r).abs().max().item()
        assert err <= rel * scale, f"{k}: max abs error {err:.3g} > {rel} x scale {scale:.3g}"


def run_with_grads(backend, x, opts, grads=("h", "c")):
    with backends.use(backend):
        return outputs_and_grads(predkern.convlstm_gates, x, opts, grads)


def check_against_reference(backend, opts, grads=("h", "c"), **make):
    """The backend in float32 against the float64 reference on the very same input values."""
    x = make_inputs(dtype=torch.float32, device=backend_device(backend), **make)
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), opts, grads)
    got = run_with_grads(backend, x, opts, grads)
    assert_close_to_ref(got, ref)
    return got


# ---------------------------------------------------------------- parity with the reference

@pytest.mark.parametrize("spatial", [(5, 7), (), (11,), (2, 3, 5)], ids=["2d", "nospatial", "1d", "3d"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_matches_reference_layouts(backend, spatial, layout):
    got = check_against_reference(backend, {"forget_bias": 1.0}, spatial=spatial, layout=layout)
    if layout == "channels_last" and len(spatial) == 2:
        assert got["h"].is_contiguous(memory_format=torch.channels_last), "outputs follow gates_x's format"


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("optional", ["none", "gates_h", "bias", "peephole", "all"])
def test_matches_reference_options(backend, gate_act, optional):
    flags = {k: optional in (k, "all") for k in ("gates_h", "bias", "peephole")}
    check_against_reference(backend, {"gate_act": gate_act, "gate_order": "ifog", "forget_bias": 0.5},
                            C=5, spatial=(3, 4), **flags)


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
@pytest.mark.parametrize("layout, C, spatial", [("contiguous", 3, (17, 19)), ("channels_last", 261, (3, 2))],
                         ids=["space_inner", "channels_inner"])
def test_rows_longer_than_a_cpu_chunk(backend, gate_act, layout, C, spatial):
    # The CPU forward runs a row in chunks of 16 vectors (256 float32, 128 float64 elements):
    # inner rows of 323 and 261 elements take several chunks and end in a partial vector.
    check_against_reference(backend, {"gate_act": gate_act, "forget_bias": 1.0}, B=1, C=C,
                            spatial=spatial, layout=layout)


@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
def test_all_gate_orders(backend, gate_act):
    # with peephole and bias, whose blocks follow the gate order too
    for order in reference.GATE_ORDERS:
        check_against_reference(backend, {"gate_order": order, "gate_act": gate_act, "forget_bias": 0.5},
                                C=2, spatial=(3,), bias=True, peephole=True)


@pytest.mark.parametrize("grads", [("h",), ("c",)], ids=["grad_h_only", "grad_c_only"])
def test_gradient_of_one_output(backend, grads):
    check_against_reference(backend, {}, grads=grads)


def test_empty(backend):
    device = backend_device(backend)
    for B, S in ((0, (4, 4)), (2, (0, 3))):
        x = make_inputs(B=B, spatial=S, device=device, dtype=torch.float32)
        h, c_new = run(backend, **x)
        assert h.shape == c_new.shape == (B, 3, *S)


def test_nan_inf_propagate_as_reference(backend):
    device = backend_device(backend)
    x = make_inputs(C=2, spatial=(4,), gates_h=False, bias=False, peephole=False, dtype=torch.float32,
                    device=device)
    x["gates_x"][0, :, 0] = float("nan")
    x["gates_x"][1, :, 1] = float("inf")
    x["gates_x"][1, :, 2] = -float("inf")
    for act in ("sigmoid", "hard_sigmoid"):
        ref = reference.convlstm_gates(**x, gate_act=act)
        got = run(backend, **x, gate_act=act)
        for r, g in zip(ref, got):
            torch.testing.assert_close(g, r, equal_nan=True)


def test_sigmoid_and_tanh_within_a_few_roundings(backend):
    """The activations alone, swept over [-100, 100] in float32: with f's pre-activation -inf
    (f = 0) and c = 0, c_new is i * g, so an infinite g's (g = 1) leaves sigmoid(x) in c_new, and an
    infinite i's (i = 1) tanh(x). The CPU kernels compute both from their own exp (csrc/cpu/
    vec_helpers.h): sigmoid within a few roundings relative to its value (down to the smallest
    normal float), tanh within a few of 1 (it is 2 sigmoid(2x) - 1)."""
    device = backend_device(backend)
    x = torch.cat([torch.linspace(-100, 100, 40001), torch.linspace(-1e-3, 1e-3, 401)]).to(device)
    inf = torch.full_like(x, float("inf"))

    def c_new(i, g):
        with torch.no_grad():
            return run(backend, torch.stack([i, -inf, g, inf])[None], torch.zeros(1, 1, x.numel(), device=device))[1]

    eps = torch.finfo(torch.float32).eps
    ref_sigmoid, ref_tanh = torch.sigmoid(x.double()), torch.tanh(x.double())
    normal = ref_sigmoid >= torch.finfo(torch.float32).tiny
    sigmoid_err = ((c_new(x, inf)[0, 0].double() - ref_sigmoid).abs() / ref_sigmoid)[normal].max().item()
    tanh_err = (c_new(inf, x)[0, 0].double() - ref_tanh).abs().max().item()
    assert sigmoid_err <= 4 * eps, f"sigmoid: relative error {sigmoid_err / eps:.2f} eps"
    assert tanh_err <= 2 * eps, f"tanh: absolute error {tanh_err / eps:.2f} eps"


def test_peephole_product_overflow_meets_an_infinite_gate_as_in_eager(backend):
    """z + W*c where W*c overflows float32 and z is -inf: eager rounds the product to inf first,
    so the gate's argument is NaN. A fused multiply-add (what GCC, nvcc and Triton make of
    z + W*c unless told not to) keeps the product exact and gives -inf, a gate of 0 instead."""
    device = backend_device(backend)
    C, S = 16, (2, 8)  # whole SIMD vectors on the CPU
    x = make_inputs(B=1, C=C, spatial=S, gates_h=False, bias=False, dtype=torch.float32, device=device)
    x["gates_x"][:, 0 * C:1 * C] = -float("inf")  # i
    x["gates_x"][:, 3 * C:4 * C] = float("inf")   # o
    x["c"].fill_(1e30)
    x["peephole"][0].fill_(1e30)  # W_ci * c = inf against z_i = -inf
    for act in ("sigmoid", "hard_sigmoid"):
        want = reference.convlstm_gates(**x, gate_act=act)  # eager float32: the product overflows
        got = run(backend, **x, gate_act=act)
        for name, w, g in zip(("h", "c_new"), want, got):
            assert w.isnan().all(), f"eager's {name} should be NaN here"
            assert g.isnan().all(), f"{act}: {name} = {g.flatten()[:2].tolist()} where eager gives NaN"


def test_infinite_grad_outside_hard_sigmoid_range_gives_zero(backend):
    """torch.clamp's backward selects: an infinite upstream grad where the clamp is saturated
    gives 0 in gates_x's grad, not NaN (inf * 0)."""
    device = backend_device(backend)
    gx = torch.zeros(1, 4, 3, device=device)
    gx[0, 3, :] = torch.tensor([10.0, -10.0, 0.0])  # o saturated at 1, at 0, then in range
    c = torch.ones(1, 1, 3, device=device)
    grad_h = torch.tensor([[[float("inf"), float("inf"), 1.0]]], device=device)
    grads = []
    for fn in (reference.convlstm_gates, lambda *a, **k: run(backend, *a, **k)):
        x = gx.clone().requires_grad_(True)
        h, _ = fn(x, c, gate_act="hard_sigmoid")
        grads.append(torch.autograd.grad(h, x, grad_h)[0])
    torch.testing.assert_close(grads[1], grads[0], equal_nan=True)
    assert grads[1][0, 3, 0] == 0 and grads[1][0, 3, 1] == 0


def test_output_without_gradient_adds_no_nan(backend):
    """A NaN in the o gate feeds only h: with a gradient on c_new alone, eager autograd never runs
    h's path, so every input gradient stays finite (zero for the o block)."""
    device = backend_device(backend)
    x = make_inputs(C=2, spatial=(3,), gates_h=False, bias=False, peephole=False, dtype=torch.float32,
                    device=device)
    x["gates_x"][:, 6:8] = float("nan")  # the o block of "ifgo"
    got = run_with_grads(backend, x, {}, grads=("c",))
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), {}, grads=("c",))
    for k in ("d_gates_x", "d_c"):
        assert torch.isfinite(got[k]).all(), k
        torch.testing.assert_close(got[k].double().cpu(), ref[k])


@pytest.mark.parametrize("nan_in", ["i", "w_co"])
def test_peephole_o_path_adds_no_nan_without_gradient_on_h(backend, nan_in):
    """With a gradient on c_new alone, eager never runs o's path: a NaN in i (so in c_new) leaves
    W_co's gradient zero (not 0 * c_new), and a NaN in W_co leaves every other gradient finite
    (not 0 * W_co). Both found by tests/test_fuzz.py."""
    device = backend_device(backend)
    x = make_inputs(C=2, spatial=(3,), gates_h=False, bias=False, dtype=torch.float32, device=device)
    if nan_in == "i":
        x["gates_x"][0, 0, 0] = float("nan")  # i of channel 0 at sample 0, position 0
    else:
        x["peephole"][2, 0, 0] = float("nan")
    got = run_with_grads(backend, x, {}, grads=("c",))
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), {}, grads=("c",))
    for k in ("d_gates_x", "d_c", "d_peephole"):
        torch.testing.assert_close(got[k].double().cpu(), ref[k], rtol=1e-5, atol=1e-6, equal_nan=True, msg=k)
    assert (got["d_peephole"][2] == 0).all()


# ---------------------------------------------------------------- gradcheck in float64

@pytest.mark.parametrize("gate_act", ["sigmoid", "hard_sigmoid"])
def test_gradcheck(backend, gate_act):
    device = backend_device(backend)
    B = 1 if backend == "triton" else 2  # gradcheck makes a call per input element: slow interpreted
    x = make_inputs(B=B, C=2, spatial=(3, 2), device=device)
    names = [k for k in TENSOR_ARGS if x[k] is not None]
    inputs = [x[k].requires_grad_(True) for k in names]

    def fn(*ts):
        with backends.use(backend):
            return predkern.convlstm_gates(**dict(zip(names, ts)), forget_bias=0.3, gate_order="ogif",
                                           gate_act=gate_act)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


# ---------------------------------------------------------------- half precision (SPEC 5 rule)

@pytest.mark.parametrize("dtype,state", [(torch.float16, None), (torch.bfloat16, None),
                                         (torch.float16, torch.float32), (torch.bfloat16, torch.float32)],
                         ids=["fp16", "bf16", "fp16_fp32state", "bf16_fp32state"])
@pytest.mark.parametrize("peephole", [True, False], ids=["peephole", "no_peephole"])
def test_half_precision_no_worse_than_eager(backend, dtype, state, peephole):
    """Without peepholes the saved sigmoid gates are rounded to the half dtype (as eager's are)."""
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    x = make_inputs(C=8, spatial=(6, 6), dtype=dtype, state_dtype=state, device=device, peephole=peephole)
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), {"forget_bias": 1.0})
    eager = outputs_and_grads(reference.convlstm_gates, x, {"forget_bias": 1.0})
    got = run_with_grads(backend, x, {"forget_bias": 1.0})
    for k, r in ref.items():
        assert got[k].dtype == eager[k].dtype, k
        err_got = (got[k].double().cpu() - r).abs()
        err_eager = (eager[k].double().cpu() - r).abs()
        # atol: one rounding in the gates' dtype (the inputs' precision) at the output's scale
        atol = torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
        bad = err_got > 2 * err_eager + atol
        assert not bad.any(), (f"{k}: {bad.sum().item()} elements worse than 2x eager + {atol:.2g}; "
                               f"worst {err_got.max().item():.3g} vs eager {err_eager.max().item():.3g}")


@pytest.mark.parametrize("dtype,state", [(torch.float32, None), (torch.float16, None),
                                         (torch.bfloat16, torch.float32)], ids=["fp32", "fp16", "bf16_fp32state"])
def test_saves_no_more_than_eager(backend, dtype, state):
    """Sigmoid gates without peepholes are saved in the gates' dtype, as eager keeps its
    activations, with c: no more bytes than eager autograd keeps, also under autocast's mix
    (float32 gates would double them there)."""
    device = backend_device(backend)
    x = {k: v.requires_grad_() if v is not None else None for k, v in
         make_inputs(C=8, spatial=(6, 6), dtype=dtype, state_dtype=state, device=device, peephole=False).items()}
    _, eager = saved_bytes(lambda: reference.convlstm_gates(**x))
    with backends.use(backend):
        _, ours = saved_bytes(lambda: predkern.convlstm_gates(**x))
    assert ours <= eager, f"{ours} bytes saved, eager {eager}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16], ids=["fp32", "fp64", "fp16"])
def test_hard_sigmoid_gradient_at_and_next_to_the_kinks(backend, dtype):
    """torch.clamp passes the gradient on the closed interval: at z = -2.5 and 2.5 exactly the
    gate's gradient is 0.2 grad, one step outside it is 0. (A fused multiply-add in 0.2 z + 0.5
    puts -2.5 outside: found by tests/test_fuzz.py.)"""
    if backend == "reference" and dtype != torch.float64:
        pytest.skip("the reference backend is eager PyTorch, whose float32 0.2 z + 0.5 rounds "
                    "2.5 + 1 ulp onto 1 where the float64 reference does not")
    device = backend_device(backend)
    kinks = torch.tensor([-2.5, 2.5], dtype=dtype)
    z = torch.cat([kinks, torch.nextafter(kinks, kinks * 2), torch.nextafter(kinks, kinks * 0)])
    gates_x = torch.stack([z, z, torch.full_like(z, 0.3), z], dim=1)  # i, f, g, o
    x = {"gates_x": gates_x.to(device), "c": torch.full((len(z), 1), 0.7, dtype=dtype, device=device),
         "gates_h": None, "bias": None, "peephole": None}
    opts = {"gate_act": "hard_sigmoid"}
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), opts)
    got = run_with_grads(backend, x, opts)
    torch.testing.assert_close(got["d_gates_x"].double().cpu(), ref["d_gates_x"], rtol=1e-2, atol=1e-3)


def test_half_pre_activation_rounding_onto_the_kink(backend):
    """f's argument -2.50084 (exact, from float16 inputs) lies outside hard_sigmoid's slope but
    rounds to the kink -2.5 in float16; eager float16 gets 0 here. Saved in half for the backward,
    it gave 0.2 grad; hard_sigmoid's arguments are saved in float32. (Found by tests/test_fuzz.py.)"""
    device = backend_device(backend)
    half = dict(dtype=torch.float16, device=device)
    x = {"gates_x": torch.tensor([[0.5, -0.003391265869140625, 0.25, -0.75]], **half),
         "c": torch.tensor([[1.62890625]], **half), "gates_h": None, "bias": None,
         "peephole": torch.tensor([[0.0], [-1.533203125], [0.0]], **half)}
    opts = {"gate_act": "hard_sigmoid"}
    ref = outputs_and_grads(reference.convlstm_gates, float64_copy(x), opts)
    eager = outputs_and_grads(reference.convlstm_gates, x, opts)
    got = run_with_grads(backend, x, opts)
    assert ref["d_gates_x"][0, 1] == 0 and eager["d_gates_x"][0, 1] == 0
    assert got["d_gates_x"][0, 1] == 0, got["d_gates_x"]


@pytest.mark.parametrize("dtype", HALF_TYPES, ids=["fp16", "bf16"])
def test_half_peephole_gradient_rounds_once(backend, dtype):
    """The peephole's gradient sums dz * c over the batch, terms that may cancel: multiplied and
    summed in float32 and rounded once, it is the half rounding of the exact sum of the gate
    gradients the op returns times c (a product rounded to half first was off by the rounding
    of the terms: 0.038 at a result of 0.054 in bfloat16, found by tests/test_fuzz.py)."""
    device = backend_device(backend)
    if backend == "reference":
        pytest.skip("the reference backend is eager PyTorch, which rounds each product to half")
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter has no bfloat16")
    x = make_inputs(B=16, C=4, spatial=(3, 5), dtype=dtype, device=device, gates_h=False, bias=False)
    got = run_with_grads(backend, x, {"forget_bias": 1.0})
    dz = got["d_gates_x"].double().cpu().chunk(4, dim=1)  # gate order ifgo
    c, c_new = x["c"].double().cpu(), got["c_new"].double().cpu()
    exact = torch.stack([(dz[0] * c).sum(0), (dz[1] * c).sum(0), (dz[3] * c_new).sum(0)])
    torch.testing.assert_close(got["d_peephole"].double().cpu(), exact.to(dtype).double(), rtol=0,
                               atol=0, msg=lambda m: f"not the rounding of the exact sum: {m}")


# ---------------------------------------------------------------- bad input

def _bad_cases():
    C = 3
    ok = dict(gates_x=torch.randn(2, 4 * C, 4, 4), c=torch.randn(2, C, 4, 4))
    yield "gates_x", dict(ok, gates_x=torch.randn(2, 4 * C + 1, 4, 4)), ValueError, "multiple of"
    yield "c", dict(ok, c=torch.randn(2, C, 4, 5)), ValueError, "shape"
    yield "c", dict(ok, c=torch.randn(2, C, 1, 1)), ValueError, "shape"  # no silent broadcast
    yield "gates_h", dict(ok, gates_h=torch.randn(2, 4 * C, 4)), ValueError, "shape"
    yield "gates_h", dict(ok, gates_h=torch.randn(2, 4 * C, 4, 4, dtype=torch.float16)), ValueError, "dtype"
    yield "bias", dict(ok, bias=torch.randn(C)), ValueError, "shape"
    yield "peephole", dict(ok, peephole=torch.randn(3, C, 1, 1)), ValueError, "shape"
    yield "gate_order", dict(ok, gate_order="ifgx"), ValueError, "permutation"
    yield "gate_order", dict(ok, gate_order="iifo"), ValueError, "permutation"
    yield "gate_act", dict(ok, gate_act="relu"), ValueError, "sigmoid"
    yield "forget_bias", dict(ok, forget_bias="1"), TypeError, "float"


@pytest.mark.parametrize("case", list(_bad_cases()), ids=lambda c: c[0])
def test_bad_input_raises_naming_the_argument(backend, case):
    raises_naming_the_argument(backend, predkern.convlstm_gates, case, backend_device(backend))


def test_inputs_are_not_modified_and_outputs_do_not_alias(backend):
    x = make_inputs(device=backend_device(backend), dtype=torch.float32)
    before = {k: v.clone() for k, v in x.items() if v is not None}
    h, c_new = run(backend, **x)
    for k, v in before.items():
        assert torch.equal(x[k], v), k
    ptrs = {v.untyped_storage().data_ptr() for v in x.values() if v is not None}
    assert h.untyped_storage().data_ptr() not in ptrs and c_new.untyped_storage().data_ptr() not in ptrs


def test_graph_behaves_as_eager_autograd(backend):
    x = make_inputs(device=backend_device(backend), dtype=torch.float64)
    check_graph_behaves_as_eager(backend, "convlstm_gates", x, saved=("c", "peephole"))
    if backend != "reference":  # one node for both outputs
        h, c_new = run(backend, **{k: v.requires_grad_() for k, v in x.items()})
        assert h.grad_fn is c_new.grad_fn and h.grad_fn is not None


# ---------------------------------------------------------------- direct torch.ops calls (C++)

def test_direct_op_call_checks_shapes():
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    with pytest.raises(ValueError, match="`c`"):
        torch.ops.predkern.convlstm_gates(torch.randn(2, 8, 3), torch.randn(2, 2, 4))
    with pytest.raises(ValueError, match="`grad_h`"):
        torch.ops.predkern.convlstm_gates_backward(torch.randn(2, 2, 5), None, torch.randn(2, 8, 3),
                                                   torch.randn(2, 2, 3), None, torch.float32, "ifgo",
                                                   "sigmoid")
