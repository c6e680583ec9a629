"""Outputs and input gradients of an op on a backend against the float64 reference (SPEC.md 5)."""
import pytest
import torch

import predkern
from predkern import backends, reference
from tensors import float64_copy, max_error_over_scale

# SPEC.md 5's rule for half dtypes, |out - ref64| <= 2 |eager - ref64| + atol, takes atol = this
# many roundings of the output's scale (eps * scale): the output's own, and that of a half value
# saved for the backward (as eager saves its activations). Where a derivative amplifies the latter
# (tanh's 1 - g^2 near |g| = 1), eager's error at one element can be small by luck while a kernel
# computing from the same saved values is off by more than one rounding: PREDKERN_FUZZ=long found
# convlstm_gates' d_gates_x 1.14 eps * scale off (the correctly rounded result from the float16
# saved gates) where eager was 0.06 off. Over 1.8M random elements of its gradients the cpu kernel's
# mean relative error was 0.48 eps, eager's 0.70.
HALF_ATOL_ROUNDINGS = 2


def outputs_and_grads(fn, x, opts=None, which=None, backend=None):
    """Outputs of fn and the gradient of every tensor input for random output grads on the
    outputs numbered in `which` (all by default). Leaves keep the inputs' strides."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in x.items()}
    if backend is None:
        out = fn(**leaves, **(opts or {}))
    else:
        with backends.use(backend):
            out = fn(**leaves, **(opts or {}))
    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
    gen = torch.Generator().manual_seed(1)
    gs = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o) for o in outs]
    pick = [k for k in range(len(outs)) if which is None or k in which]
    dx = torch.autograd.grad([outs[k] for k in pick], list(leaves.values()), [gs[k] for k in pick],
                             allow_unused=True)
    grads = {"d_" + k: (d if d is not None else torch.zeros_like(leaves[k])) for k, d in zip(leaves, dx)}
    return {**{f"out{k}": o for k, o in enumerate(outs)}, **grads}


def check(backend, op, x, opts=None, which=None, rel=1e-5):
    """Every output and input gradient of predkern.<op> on `backend` within `rel` x the scale of
    the float64 reference's; returns the backend's results."""
    ref = outputs_and_grads(getattr(reference, op), float64_copy(x), opts, which)
    got = outputs_and_grads(getattr(predkern, op), x, opts, which, backend)
    assert ref.keys() == got.keys()
    for k, r in ref.items():
        assert got[k].shape == r.shape, k
        err = max_error_over_scale(got[k], r)
        assert err <= rel, f"{op} {k}: max error {err:.3g} x scale > {rel}"
    return got


def half_no_worse_than_eager(backend, op, x, opts=None):
    """SPEC.md 5: |out - ref64| <= 2 |eager - ref64| + atol (HALF_ATOL_ROUNDINGS eps * scale), for
    every output and grad."""
    dtype = next(v.dtype for v in x.values() if isinstance(v, torch.Tensor))
    ref = outputs_and_grads(getattr(reference, op), float64_copy(x), opts)
    eager = outputs_and_grads(getattr(reference, op), x, opts)
    got = outputs_and_grads(getattr(predkern, op), x, opts, backend=backend)
    for k, r in ref.items():
        assert got[k].dtype == eager[k].dtype, k
        err_got = (got[k].double().cpu() - r).abs()
        err_eager = (eager[k].double().cpu() - r).abs()
        atol = HALF_ATOL_ROUNDINGS * torch.finfo(dtype).eps * max(1.0, r.abs().max().item())
        bad = err_got > 2 * err_eager + atol
        assert not bad.any(), f"{k}: {bad.sum().item()} elements worse than 2x eager + {atol:.2g}"


def saved_bytes(fn):
    """(fn(), the bytes autograd keeps for its backward: distinct storages, as
    saved_tensors_hooks see them)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(storages.values())


def raises_naming_the_argument(backend, fn, case, device):
    """A bad-input case (name, kwargs, exception type, words) raises before any kernel runs, with
    a message naming `name`, word for word the reference's (SPEC.md section 5: the same errors on
    every backend), and leaves every input as it was."""
    import pytest

    name, kwargs, exc, words = case
    kwargs = {k: (v.to(device) if isinstance(v, torch.Tensor) and v.device.type == "cpu" else v)
              for k, v in kwargs.items()}
    before = {k: v.clone() for k, v in kwargs.items()
              if isinstance(v, torch.Tensor) and v.layout == torch.strided and v.device.type != "meta"}
    with backends.use(backend), pytest.raises(exc) as info:
        fn(**kwargs)
    assert f"`{name}`" in str(info.value) and words in str(info.value), str(info.value)
    if backend != "reference":
        with backends.use("reference"), pytest.raises(exc) as ref_info:
            fn(**kwargs)
        assert str(info.value) == str(ref_info.value)
    for k, v in before.items():
        assert torch.equal(kwargs[k], v), f"{k} was modified"


def compiled_matches_eager(step, x, backend):
    """torch.compile(step, fullgraph=True) on `backend` (fullgraph raises on any graph break):
    the loss and the gradients of every input in `x` equal eager's."""
    torch._dynamo.reset()
    with backends.use(backend):
        loss = torch.compile(step, fullgraph=True, backend="aot_eager")(**x)
        grads = torch.autograd.grad(loss, list(x.values()))
        loss_eager = step(**x)
        grads_eager = torch.autograd.grad(loss_eager, list(x.values()))
    torch.testing.assert_close(loss, loss_eager)
    for g, ge in zip(grads, grads_eager):
        torch.testing.assert_close(g, ge)


def check_graph_behaves_as_eager(backend, op, x, opts=None, saved=()):
    """predkern.<op>'s autograd graph on `backend` (on cpu/cuda a hand-written C++ node) behaves
    as eager autograd's: a second backward without retain_graph raises, one with it gives the same
    gradients, and each input named in `saved` (one the op saves), changed in place after the
    call, makes backward raise. x: the inputs, float64 for exact equality."""
    def loss_of(inputs):
        with backends.use(backend):
            out = getattr(predkern, op)(**inputs, **(opts or {}))
        return sum(o.sum() for o in (out if isinstance(out, tuple) else (out,)) if o is not None)

    leaves = {k: v.detach().requires_grad_() for k, v in x.items() if v is not None}
    loss = loss_of(leaves)
    first = torch.autograd.grad(loss, list(leaves.values()), retain_graph=True)
    again = torch.autograd.grad(loss, list(leaves.values()))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(loss, list(leaves.values()))
    for name in saved:
        inputs = {k: (v.detach().clone() if v is not None else None) for k, v in x.items()}
        next(iter(inputs.values())).requires_grad_()
        loss = loss_of(inputs)
        with torch.no_grad():
            inputs[name].add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
