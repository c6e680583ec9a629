"""The triton backend's ops in eager mode, without their custom ops' dispatch.

Each op's Triton path is a pair of torch.library custom ops (forward and backward): torch.compile
and opcheck need them (opaque to Dynamo, with fake implementations). But their Python dispatch (the
custom op's autograd wrapper, the redispatch, the Dynamo-disable wrapper) costs more than the
kernels at the sizes people train: with the launches stubbed out, a convlstm_gates forward+backward
at B=1, C=4, 4x4 took 388 us of host time through them and 293 us through this path on a 2-core
EPYC (`benchmarks/host_profile.py --stub-triton-launch --backward`, README). Outside
torch.compile, on plain tensors, `call` runs the same implementations through a
torch.autograd.Function instead, with the same setup_context and gradient formula.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

_PLAIN = (Tensor, torch.nn.Parameter)


def function(name: str, forward_impl, backward_impl, setup_context, grad, backward_op) -> type:
    """An autograd.Function over a custom op pair's implementations: forward_impl(*args) (its last
    argument `save`), setup_context(ctx, args, outputs) and grad(ctx, *grads, backward=...) as
    registered with the custom op, grad calling backward_impl in place of the backward custom op
    (backward_op), but for batched gradients."""

    def forward(ctx, *args):  # not the setup_context style, whose apply calls inspect.signature
        outputs = forward_impl(*args)
        setup_context(ctx, args, outputs)
        return outputs

    @once_differentiable  # the kernels' gradients have no gradient of their own, as the custom op's
    def backward(ctx, *grads):
        # batched gradients (torch.autograd.grad(is_grads_batched=True), as gradcheck's batched
        # check runs it) reach the kernels only through the custom op's dispatch, slice by slice
        batched = any(isinstance(g, Tensor) and _batched(g) for g in grads)
        return grad(ctx, *grads, backward=backward_op if batched else backward_impl)

    # built by type() so that autograd names its nodes after the op (`<name>Backward`)
    return type(name, (torch.autograd.Function,), dict(
        forward=staticmethod(forward), backward=staticmethod(backward), impl=staticmethod(forward_impl)))


def _batched(t: Tensor) -> bool:
    """A tensor batched by vmap: autograd's is_grads_batched (the legacy vmap) or torch.func's."""
    return torch._C._functorch.is_legacy_batchedtensor(t) or torch._C._functorch.is_functorch_wrapped_tensor(t)


def saves(*tensors) -> bool:
    """Whether the forward must save for backward (the custom ops' last argument): under grad mode
    when an input requires grad."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def call(op, direct: type, *args):
    """op(*args), a triton custom op whose last argument says whether to save for backward; through
    `direct` (see `function`) outside torch.compile and TorchDispatchModes, when every tensor is a
    plain one. The others (FakeTensorMode, fake, functional or other subclass tensors among them)
    keep the custom op, whose dispatch and fake implementation handle them, and so does
    torch.jit.trace: it records dispatcher ops only, so a kernel launched here would be missing from
    the trace. Traced, the op always saves for backward: the trace replays the `save` it records
    whatever its later inputs require. (The ops take torch.func transforms elsewhere: _functorch.py.)"""
    if torch.jit.is_tracing():
        return op(*args[:-1], True)
    if (torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack()
            or any(type(a) not in _PLAIN for a in args if isinstance(a, Tensor))):
        return op(*args)
    return direct.apply(*args) if args[-1] else direct.impl(*args)
