"""The bad-input table every op shares (SPEC.md section 5 and more): each tensor argument of each
op in turn given a wrong kind of tensor. Every case raises the named exception type, before any
kernel runs, with a message that names the argument, and writes no input. The op-specific cases
(channel multiples, shapes, options) are in each op's own test file; NaN and Inf are not errors:
they propagate as in the reference (the last test here, and tests/test_fuzz.py).

A `requires_grad` integer tensor cannot be made (torch refuses), so the integer rows cover it."""
import warnings

import pytest
import torch

import predkern
from predkern import reference
from conftest import backend_device
from op_table import OPS, inputs
from oracle import outputs_and_grads
from tensors import float64_copy


def _quantized(t):
    with warnings.catch_warnings():  # quantized tensors are deprecated, and still exist
        warnings.simplefilter("ignore")
        return torch.quantize_per_tensor(t.float().cpu(), 0.1, 0, torch.quint8)


# kind -> (make the bad tensor from a good one, exception, words in the message, where the case
# exists: "any" device, "cpu" only, "cuda" only, or "cpu+gpu": CPU inputs on a machine with a GPU)
KINDS = {
    "list": (lambda t: t.tolist(), TypeError, "torch.Tensor", "any"),
    "int32": (lambda t: t.to(torch.int32), TypeError, "floating", "any"),
    "bool": (lambda t: t > 0, TypeError, "floating", "any"),
    "complex": (lambda t: t.to(torch.complex64), TypeError, "floating", "any"),
    "quantized": (_quantized, TypeError, "floating", "cpu"),
    "sparse_coo": (lambda t: t.to_sparse(), ValueError, "strided", "any"),
    "sparse_csr": (lambda t: t.reshape(t.shape[0], -1).to_sparse_csr(), ValueError, "strided", "any"),
    "mkldnn": (lambda t: t.float().to_mkldnn(), ValueError, "strided", "cpu"),
    "nested": (lambda t: torch.nested.nested_tensor(list(t)), ValueError, "strided", "any"),
    "meta": (lambda t: t.to("meta"), ValueError, "device", "any"),
    "on_cpu": (lambda t: t.cpu(), ValueError, "device", "cuda"),         # beside CUDA tensors
    "on_cuda": (lambda t: t.cuda(), ValueError, "device", "cpu+gpu"),    # beside CPU tensors
    "rank": (lambda t: t.reshape(-1) if t.dim() > 1 else t.reshape(1, -1), ValueError, "shape", "any"),
    "float64": (lambda t: t.double(), ValueError, "dtype", "any"),
}
# The first tensor sets the device and the gates' dtype: a mismatch there is reported on the next.
NOT_FIRST = {"meta", "on_cpu", "on_cuda", "float64"}


def _cases():
    for op, args in OPS.items():
        for k, arg in enumerate(args):
            for kind in KINDS:
                if k == 0 and kind in NOT_FIRST:
                    continue
                marks = [pytest.mark.gpu] if KINDS[kind][3] == "cpu+gpu" else []
                yield pytest.param(op, arg.name, kind, id=f"{op}-{arg.name}-{kind}", marks=marks)


@pytest.mark.parametrize("op,name,kind", list(_cases()))
def test_bad_tensor_raises_naming_the_argument(backend, op, name, kind):
    make, exc, words, where = KINDS[kind]
    device = backend_device(backend)
    if where in ("cpu", "cpu+gpu") and device != "cpu":
        pytest.skip(f"the {kind} case is one of CPU inputs")
    if where == "cuda" and device != "cuda":
        pytest.skip(f"the {kind} case is one of CUDA inputs")
    x = inputs(op, device=device)
    before = {k: v.clone() for k, v in x.items()}
    x[name] = make(x[name])
    with predkern.backends.use(backend), pytest.raises(exc) as info:
        getattr(predkern, op)(**x)
    message = str(info.value)
    assert f"`{name}`" in message and words in message, message
    if backend != "reference":  # word for word the reference's message (SPEC.md section 5: the same errors)
        with predkern.backends.use("reference"), pytest.raises(exc) as ref_info:
            getattr(predkern, op)(**x)
        assert message == str(ref_info.value)
    for k, v in before.items():
        if k != name:
            assert torch.equal(x[k], v), f"{k} was written"


@pytest.mark.parametrize("op", list(OPS))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_inf_propagate_as_in_the_reference(backend, op, value):
    """A NaN or Inf in each argument in turn: every output and gradient has NaN and Inf exactly
    where the float64 reference has them (and the same finite values elsewhere)."""
    device = backend_device(backend)
    for arg in OPS[op]:
        x = inputs(op, C=2, spatial=(3, 2), device=device)
        x[arg.name].view(-1)[1] = value
        ref = outputs_and_grads(getattr(reference, op), float64_copy(x))
        got = outputs_and_grads(getattr(predkern, op), x, backend=backend)
        for k, r in ref.items():
            g = got[k].detach().double().cpu()
            assert torch.equal(g.isnan(), r.isnan()), f"{arg.name}={value}: NaN in {k} differs"
            assert torch.equal(g.isinf(), r.isinf()) and torch.equal(g[r.isinf()], r[r.isinf()]), \
                f"{arg.name}={value}: Inf in {k} differs"
            fin = r.isfinite()
            if fin.any():
                torch.testing.assert_close(g[fin], r[fin], rtol=1e-5, atol=1e-5 * max(1.0, r[fin].abs().max().item()),
                                           msg=f"{arg.name}={value}: finite values of {k}")


def test_numpy_scalars_are_accepted_as_float_options(backend):
    """A NumPy float32 (what indexing a float32 array gives) is a number like any float: the
    float options take it and compute as with the Python float."""
    np = pytest.importorskip("numpy")
    device = backend_device(backend)
    for op, option in (("convlstm_gates", "forget_bias"), ("stlstm_memory", "forget_bias"),
                       ("prednet_error", "clip_max")):
        x = inputs(op, device=device)
        with predkern.backends.use(backend):
            want = getattr(predkern, op)(**x, **{option: 0.25})
            got = getattr(predkern, op)(**x, **{option: np.float32(0.25)})
        for g, w in zip(got, want):
            assert (g is None and w is None) or torch.equal(g, w), f"{op}: {option}"
    with pytest.raises(TypeError, match="`forget_bias` must be a float, got bool"):
        predkern.convlstm_gates(**inputs("convlstm_gates", device=device), forget_bias=True)
