"""torch.func transforms over every op on every backend (predkern/ops/_functorch.py): grad, vjp,
vmap and vmap of grad against the float64 reference. The fused ops are differentiable once, in
reverse mode: under forward-mode AD (dual tensors, torch.func.jvp) and nested torch.func
gradients every backend runs the reference; a double backward (create_graph=True, such as a
gradient penalty), which cannot be seen coming when the op runs, raises, where before the cpu and
cuda backends took their gradients as constants, a silently wrong result. An argument or output
changed in place between the forward and the backward is refused or harmless. Also
torch.jit.trace and torch.export of every op."""
import re

import pytest
import torch

import predkern
from predkern import backends, reference
from conftest import backend_device
from op_table import OPS, inputs

OPTIONS = {"convlstm_gates": dict(forget_bias=1.0, gate_order="ifog"), "stlstm_memory": dict(return_deltas=True),
           "stlstm_output": {}, "decoupling_loss": {}, "prednet_error": dict(clip_max=1.0, return_mean=True)}


def _scalar(outputs):
    """A scalar of all of an op's outputs, nonlinear in each (so every output's gradient counts)."""
    return sum((k + 1) * o.square().sum() + o.sum() for k, o in enumerate(outputs))


def _loss(op, fn):
    """_scalar of op's outputs as a function of its tensor arguments in OPS order."""
    names = [arg.name for arg in OPS[op]]

    def loss(*tensors):
        out = fn(**dict(zip(names, tensors)), **OPTIONS[op])
        return _scalar(out if isinstance(out, tuple) else (out,))
    return loss


def _args(op, backend, seed=0, view="contiguous", C=2, spatial=(3, 2)):
    views = {arg.name: view for arg in OPS[op]}
    return tuple(inputs(op, B=2, C=C, spatial=spatial, dtype=torch.float64, device=backend_device(backend),
                        seed=seed, views=views).values())


def _assert_close(got, want):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("view", ["contiguous", "channels_last", "sliced"])
@pytest.mark.parametrize("op", list(OPS))
def test_grad_and_vjp_match_the_reference(backend, op, view):
    """Odd sizes (C=3, 3x5), every argument contiguous, channels_last or a strided slice."""
    args = _args(op, backend, view=view, C=3, spatial=(3, 5))
    argnums = tuple(range(len(args)))
    want = torch.func.grad(_loss(op, getattr(reference, op)), argnums=argnums)(*args)
    with backends.use(backend):
        _assert_close(torch.func.grad(_loss(op, getattr(predkern, op)), argnums=argnums)(*args), want)
        value, vjp = torch.func.vjp(_loss(op, getattr(predkern, op)), *args)
        _assert_close(vjp(torch.ones_like(value)), want)


@pytest.mark.parametrize("op", list(OPS))
def test_jacrev_matches_the_reference(backend, op):
    """jacrev: a vmap over the backward (the cotangents batched), where vmap of grad batches the
    whole op. The Jacobian of the first output in the first argument."""
    names = [arg.name for arg in OPS[op]]

    def first_output(fn):
        def f(*tensors):
            out = fn(**dict(zip(names, tensors)), **OPTIONS[op])
            return out[0] if isinstance(out, tuple) else out
        return f

    args = _args(op, backend)
    want = torch.func.jacrev(first_output(getattr(reference, op)))(*args)
    with backends.use(backend):
        _assert_close([torch.func.jacrev(first_output(getattr(predkern, op)))(*args)], [want])


@pytest.mark.parametrize("op", list(OPS))
def test_vmap_and_vmap_of_grad_match_the_reference(backend, op):
    """Three argument sets stacked along a new dim: per-set outputs, and per-set gradients (as
    per-sample gradients are taken)."""
    sets = [_args(op, backend, seed) for seed in range(3)]
    stacked = tuple(torch.stack(ts) for ts in zip(*sets))
    argnums = tuple(range(len(stacked)))
    ref = _loss(op, getattr(reference, op))
    with backends.use(backend):
        fused = _loss(op, getattr(predkern, op))
        _assert_close([torch.func.vmap(fused)(*stacked)], [torch.func.vmap(ref)(*stacked)])
        _assert_close(torch.func.vmap(torch.func.grad(fused, argnums=argnums))(*stacked),
                      torch.func.vmap(torch.func.grad(ref, argnums=argnums))(*stacked))


@pytest.mark.parametrize("op", list(OPS))
def test_gradient_of_a_gradient_runs_the_reference(backend, op):
    """Nested torch.func.grad (a gradient of a gradient): the fused ops are differentiable once,
    so under it every backend runs the reference (before, the fused backends raised)."""
    args = _args(op, backend)

    def grad_norm(fn):
        first = torch.func.grad(_loss(op, fn), argnums=tuple(range(len(args))))
        return lambda *a: sum(g.square().sum() for g in first(*a))

    argnums = tuple(range(len(args)))
    want = torch.func.grad(grad_norm(getattr(reference, op)), argnums=argnums)(*args)
    with backends.use(backend):
        _assert_close(torch.func.grad(grad_norm(getattr(predkern, op)), argnums=argnums)(*args), want)


@pytest.mark.parametrize("grad_mode", [True, False])
@pytest.mark.parametrize("op", list(OPS))
def test_forward_mode_ad_matches_the_reference(backend, op, grad_mode):
    """Dual tensors (torch.autograd.forward_ad), with grad mode on and off, and torch.func.jvp: the
    tangent of every output equals the reference's. The fused kernels have no forward-mode
    formula, so every backend runs the reference here; before, the cpu, cuda and triton backends
    returned outputs without a tangent (a silent zero) and torch.func.jvp raised."""
    import torch.autograd.forward_ad as fwAD
    names = [arg.name for arg in OPS[op]]
    args = _args(op, backend)
    tangents = _args(op, backend, seed=1)

    def outputs(fn, *tensors):
        out = fn(**dict(zip(names, tensors)), **OPTIONS[op])
        return out if isinstance(out, tuple) else (out,)

    want = torch.func.jvp(lambda *a: outputs(getattr(reference, op), *a), args, tangents)[1]
    with backends.use(backend), torch.set_grad_enabled(grad_mode), fwAD.dual_level():
        duals = [fwAD.make_dual(a, t) for a, t in zip(args, tangents)]
        got = [fwAD.unpack_dual(o).tangent for o in outputs(getattr(predkern, op), *duals)]
    assert all(g is not None for g in got)
    _assert_close(got, want)
    with backends.use(backend):
        _assert_close(torch.func.jvp(lambda *a: outputs(getattr(predkern, op), *a), args, tangents)[1], want)


def test_compiled_op_refuses_dual_tensors_instead_of_dropping_their_tangent():
    """torch.ops.predkern.<op> (the C++ op, which predkern.<op> calls on the cpu and cuda backends)
    given a dual tensor raises, with grad mode on or off."""
    import torch.autograd.forward_ad as fwAD
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip(backends.unavailable_reason("cpu", "cpu"))
    gates_x, c = _args("convlstm_gates", "cpu")[:2]
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode), fwAD.dual_level():
            dual = fwAD.make_dual(c, torch.ones_like(c))
            with pytest.raises(RuntimeError, match="no forward-mode AD formula"):
                torch.ops.predkern.convlstm_gates(gates_x, dual, None, None, None, 1.0, "ifgo", "sigmoid")


@pytest.mark.parametrize("op", list(OPS))
def test_double_backward_raises_instead_of_a_wrong_gradient_penalty(backend, op):
    """backward with create_graph=True, then backward through the gradients (a gradient penalty)."""
    if backend == "reference":
        pytest.skip("plain PyTorch: differentiable to any order")
    x = [t.requires_grad_() for t in _args(op, backend)]
    with backends.use(backend):
        loss = _loss(op, getattr(predkern, op))(*x)
        grads = torch.autograd.grad(loss, x, create_graph=True, allow_unused=True)
        penalty = sum(g.square().sum() for g in grads if g is not None)
        with pytest.raises(RuntimeError, match="not implemented|differentiate twice"):
            (loss + penalty).backward()


def _gradients_after_a_change(op, backend, target, in_place):
    """The gradients of a loss of op's outputs when, after the forward, `target` (an argument's
    name, or "out<k>") is doubled in place; in_place=False: the same loss without the in-place
    change (an argument left alone, an output replaced by its double)."""
    names = [arg.name for arg in OPS[op]]
    leaves = [t.requires_grad_() for t in _args(op, backend)]
    args = [t * 1 for t in leaves]  # not leaves, which autograd never lets change in place
    with backends.use(backend):
        out = getattr(predkern, op)(**dict(zip(names, args)), **OPTIONS[op])
    out = list(out if isinstance(out, tuple) else (out,))
    if target in names:
        if in_place:
            args[names.index(target)].mul_(2)
    else:
        k = int(target.removeprefix("out"))
        out[k] = out[k].mul_(2) if in_place else out[k] * 2
    return torch.autograd.grad(_scalar(out), leaves, allow_unused=True)


@pytest.mark.parametrize("op", list(OPS))
def test_in_place_change_after_the_forward_is_refused_or_harmless(backend, op):
    """An argument or output changed in place between the forward and the backward (a user's
    c_new.clamp_(), say): autograd's version check refuses it, as it does for eager ops, or the
    backward does not read that tensor and the gradients are those without the change. A kernel
    that kept a tensor for its backward behind autograd's back would give a silently wrong one."""
    names = [arg.name for arg in OPS[op]]
    with backends.use(backend):
        out = getattr(predkern, op)(*_args(op, backend), **OPTIONS[op])
    n_out = len(out) if isinstance(out, tuple) else 1
    for target in names + [f"out{k}" for k in range(n_out)]:
        try:
            got = _gradients_after_a_change(op, backend, target, in_place=True)
        except RuntimeError as e:
            assert re.search("modified (by an )?inplace", str(e)), (target, str(e))
            continue
        want = _gradients_after_a_change(op, backend, target, in_place=False)
        for g, w in zip(got, want, strict=True):
            assert (g is None) == (w is None), target
            if g is not None:
                torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12, msg=lambda m: f"{target}: {m}")


@pytest.mark.parametrize("op", list(OPS))
def test_backward_of_batched_output_gradients(backend, op):
    """torch.autograd.grad(is_grads_batched=True), as gradcheck's batched check runs it: three sets
    of output gradients at once give what three backward calls give."""
    names = [arg.name for arg in OPS[op]]
    x = [t.requires_grad_() for t in _args(op, backend)]
    with backends.use(backend):
        out = getattr(predkern, op)(**dict(zip(names, x)), **OPTIONS[op])
    out = out if isinstance(out, tuple) else (out,)
    gen = torch.Generator().manual_seed(2)
    grads = [torch.randn(3, *o.shape, generator=gen, dtype=o.dtype).to(o.device) for o in out]
    batched = torch.autograd.grad(out, x, grads, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        _assert_close([b[i] for b in batched], torch.autograd.grad(out, x, [g[i] for g in grads], retain_graph=True))


@pytest.mark.parametrize("op", list(OPS))
def test_jit_trace_records_the_op_and_replays_it_on_new_inputs(backend, op):
    """torch.jit.trace records dispatcher ops only: the traced function, called on other values,
    must give the reference's outputs and gradients (a kernel launched outside the dispatcher
    would be missing from the trace, its outputs frozen as constants)."""
    loss = _loss(op, getattr(predkern, op))
    with backends.use(backend):
        traced = torch.jit.trace(loss, _args(op, backend, seed=0), check_trace=False)
    x = [t.requires_grad_() for t in _args(op, backend, seed=1)]
    want_x = [t.detach().requires_grad_() for t in x]
    want = _loss(op, getattr(reference, op))(*want_x)
    with backends.use(backend):
        got = traced(*x)
    _assert_close([got], [want])
    _assert_close(torch.autograd.grad(got, x, allow_unused=True, materialize_grads=True),
                  torch.autograd.grad(want, want_x, allow_unused=True, materialize_grads=True))


@pytest.mark.parametrize("op", list(OPS))
def test_torch_export_runs_the_op_on_new_inputs(backend, op):
    names = [arg.name for arg in OPS[op]]

    class Op(torch.nn.Module):
        def forward(self, *tensors):
            out = getattr(predkern, op)(**dict(zip(names, tensors)), **OPTIONS[op])
            return out if isinstance(out, tuple) else (out,)

    with backends.use(backend):
        exported = torch.export.export(Op(), _args(op, backend, seed=0)).module()
        got = exported(*_args(op, backend, seed=1))
    with backends.use("reference"):
        _assert_close(got, Op()(*_args(op, backend, seed=1)))
