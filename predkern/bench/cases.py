"""The benchmark cases: one definition shared by `predkern bench` and benchmarks/ (pytest-benchmark).

A case is an op at a named shape; each is run by every contender (eager PyTorch, torch.compile of
the same math, and every predkern backend that runs on the device) in two modes: forward
(inference, no autograd) and forward+backward.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Callable

import torch

from predkern import backends, ops, reference

MODES = ("forward", "forward+backward")


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    shape_name: str
    dims: dict                      # the op's size parameters, e.g. B, C, H, W
    make_inputs: Callable            # (device, dtype, requires_grad, generator) -> dict of tensors
    eager: Callable                  # the op written as eager PyTorch (predkern.reference)
    fused: Callable                  # predkern's public op
    min_bytes: int                   # the fewest bytes a fused forward can move (DESIGN.md)
    outputs: Callable = staticmethod(lambda out: out)  # the differentiable outputs of a call

    @property
    def name(self) -> str:
        return f"{self.op}[{self.shape_name}]"


def _convlstm_inputs(B, C, H, W):
    def make(device, dtype, requires_grad, generator):
        def rand(*shape):
            t = torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)
            return t.requires_grad_(requires_grad)
        return {"gates_x": rand(B, 4 * C, H, W), "c": rand(B, C, H, W), "gates_h": rand(B, 4 * C, H, W)}
    return make


def _convlstm_case(shape_name, B, C, H, W):
    # forward reads gates_x, gates_h (4C each) and c, writes h and c_new: 11 floats per hidden element
    return Case("convlstm_gates", shape_name, dict(B=B, C=C, H=H, W=W), _convlstm_inputs(B, C, H, W),
                eager=functools.partial(reference.convlstm_gates, forget_bias=1.0),
                fused=functools.partial(ops.convlstm_gates, forget_bias=1.0),
                min_bytes=11 * B * C * H * W * 4)


# name -> (B, C, H, W); "tiny" measures per-call host cost, where the kernel itself costs nothing
CONVLSTM_SHAPES = {
    "tiny": (1, 4, 4, 4),
    "small": (4, 32, 16, 16),
    "mnist": (16, 128, 16, 16),     # Moving MNIST ConvLSTM/PredRNN config
    "large": (16, 128, 64, 64),
}
DEFAULT_SHAPES = ("tiny", "small")
FULL_SHAPES = ("tiny", "mnist", "large")


def cases(shapes=DEFAULT_SHAPES, op_names=None) -> list[Case]:
    out = []
    if op_names is None or "convlstm_gates" in op_names:
        unknown = set(shapes) - set(CONVLSTM_SHAPES)
        if unknown:
            raise ValueError(f"unknown shapes {sorted(unknown)}; known: {sorted(CONVLSTM_SHAPES)}")
        out += [_convlstm_case(s, *CONVLSTM_SHAPES[s]) for s in shapes]
    return out


def contenders(device_type: str, requested_backends=None) -> list[str]:
    """eager, compile, then `predkern-<backend>` for each backend that runs on this device (the
    Triton interpreter is a correctness tool, not a contender)."""
    names = ["eager", "compile"]
    for backend in ("cpu", "cuda", "triton"):
        if requested_backends is not None and backend not in requested_backends:
            continue
        if backend == "triton" and device_type != "cuda":
            continue
        if backends.unavailable_reason(backend, device_type) is None:
            names.append(f"predkern-{backend}")
    return names


def callable_for(case: Case, contender: str) -> Callable:
    """A function of the case's inputs (keyword arguments) returning its outputs. A predkern
    contender's function must run inside `contender_backend(contender)`."""
    if contender == "eager":
        return case.eager
    if contender == "compile":
        return _compiled(case.eager)
    return case.fused


def contender_backend(contender: str):
    """The context that selects a predkern contender's backend (a no-op for the others); entered
    around a burst of timed calls, not per call, so its cost is not timed."""
    if contender.startswith("predkern-"):
        return backends.use(contender.removeprefix("predkern-"))
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def _compiled(fn):
    return torch.compile(fn, fullgraph=True)
