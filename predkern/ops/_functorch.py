"""Every backend under torch.func transforms (grad, vjp, jacrev, vmap of grad, ...).

torch.func runs a custom gradient only through an autograd.Function that defines setup_context. The
cpu and cuda ops' autograd is C++ (for its small host cost per call) and the triton custom ops'
is torch.library's, whose autograd.Function (torch 2.13) defines none: under torch.func.grad both
raised. Under a transform each op instead runs its forward and backward halves (the C++ ops
predkern::<op>_forward and _backward, or the triton custom ops) through a Function built here,
with the setup_context and gradient formula the op registers for its triton custom ops. Under vmap
it runs once per slice of the vmapped dim (the halves have no batching rules).
"""
from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


def active() -> bool:
    """Whether a torch.func transform is running (its wrapped tensors reach the op). Those that
    differentiate twice, or in forward mode, never get here: backends.select gives them the
    reference. Not while torch.compile traces: the ops are graph nodes there."""
    return torch._C._functorch.peek_interpreter_stack() is not None and not torch.compiler.is_compiling()


def function(name: str, forward, backward, setup_context, grad, drop_save: bool = False) -> type:
    """An autograd.Function for torch.func: forward(*args) runs the op's forward half (an op) on
    the arguments of its triton forward, whose last, `save`, is True (dropped for a C++ forward:
    drop_save); setup_context(ctx, args, outputs) and grad(ctx, *grads, backward=...) are the op's,
    grad calling `backward`, its backward half (an op). Under vmap, one call per slice of the
    vmapped dim. Differentiable once: the gradient of its gradient raises."""

    def half(op):
        # The halves see detached tensors: their gradient is this Function's, not their own (a
        # C++ autograd kernel, or torch.library's autograd, which torch.func refuses); the
        # dispatcher unwraps whatever transform levels remain.
        def run(*args):
            args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
            with torch._C._AutoDispatchBelowAutograd():
                return op(*args)
        return run

    forward_half, backward_half = half(forward), half(backward)

    def forward_(*args):
        return forward_half(*args[:-1]) if drop_save else forward_half(*args)

    @once_differentiable
    def backward_(ctx, *grads):
        return grad(ctx, *grads, backward=backward_half)

    def vmap(info, in_dims, *args):
        # the halves have no batching rules: a call per slice, the outputs stacked along dim 0
        calls = [cls.apply(*[a.select(d, i) if d is not None else a for a, d in zip(args, in_dims)])
                 for i in range(info.batch_size)]
        outputs = tuple(torch.stack(slices) for slices in zip(*calls))
        return outputs, (0,) * len(outputs)

    # built by type() so that autograd names its nodes after the op (`<name>Backward`)
    cls = type(name, (torch.autograd.Function,), dict(
        forward=staticmethod(forward_), setup_context=staticmethod(setup_context),
        backward=staticmethod(backward_), vmap=staticmethod(vmap)))
    return cls


def functions(name: str, setup_context, grad, triton, cpp=None) -> dict:
    """{backend: Function} of an op: triton's over its custom ops and, where the extension loaded
    (cpp given), cpu's and cuda's over its C++ ops. `triton` and `cpp` are (forward, backward)
    pairs; the C++ forward takes the triton forward's arguments but its last (`save`)."""
    out = {"triton": function(f"_FuncTriton{name}", *triton, setup_context, grad)}
    if cpp is not None:
        out["cpu"] = out["cuda"] = function(f"_Func{name}", *cpp, setup_context, grad, drop_save=True)
    return out
