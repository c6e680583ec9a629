"""The benchmark cases: one definition shared by `predkern bench` and benchmarks/ (pytest-benchmark).

A case is an op at a named shape; each is run by every contender (eager PyTorch, torch.compile of
the same math, and every predkern backend that runs on the device) in two modes: forward
(inference, no autograd) and forward+backward; a model's training iteration also in a third,
forward+backward under bf16 autocast.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from predkern import backends, ops, reference

MODES = ("forward", "forward+backward")
# A training iteration under bf16 autocast (the models' cases only): convs in bf16, cell state fp32.
AUTOCAST = "forward+backward (bf16 autocast)"
TRAIN_MODES = MODES + (AUTOCAST,)


@dataclasses.dataclass(frozen=True)
class Case:
    op: str
    shape_name: str
    dims: dict                      # the op's size parameters, e.g. B, C, H, W
    make_inputs: Callable            # (device, dtype, requires_grad, generator) -> dict of tensors
    eager: Callable                  # the op written as eager PyTorch (predkern.reference)
    fused: Callable                  # predkern's public op
    min_bytes: int | None            # the fewest bytes a fused forward can move (DESIGN.md)
    modes: tuple = MODES            # what is timed: MODES, and for a model also AUTOCAST
    convs: bool = False             # runs convolutions (TF32 on a GPU by PyTorch's default)

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


def _rand_inputs(shapes: dict, weights=()):
    """make_inputs for named random tensors; `weights` are scaled like a conv's default init."""
    def make(device, dtype, requires_grad, generator):
        out = {}
        for name, shape in shapes.items():
            t = torch.randn(*shape, generator=generator)
            if name in weights:
                t = t / math.sqrt(math.prod(shape[1:]))
            out[name] = t.to(device=device, dtype=dtype).requires_grad_(requires_grad)
        return out
    return make


def _stlstm_cases(shape_name, B, C, H, W, k, Cin):
    S = (H, W)
    memory = Case("stlstm_memory", shape_name, dict(B=B, C=C, H=H, W=W),
                  _rand_inputs({"x_cat": (B, 7 * C, *S), "h_cat": (B, 4 * C, *S), "m_cat": (B, 3 * C, *S),
                                "c": (B, C, *S), "m": (B, C, *S)}),
                  eager=reference.stlstm_memory, fused=ops.stlstm_memory,
                  # reads x (6 of 7 blocks), h (3 of 4), m_cat (3), c, m; writes mem (2), deltas (2)
                  min_bytes=18 * B * C * H * W * 4)
    output = Case("stlstm_output", shape_name, dict(B=B, C=C, H=H, W=W),
                  _rand_inputs({"x_cat": (B, 7 * C, *S), "h_cat": (B, 4 * C, *S), "o_conv": (B, C, *S),
                                "last_conv": (B, C, *S)}),
                  eager=reference.stlstm_output, fused=ops.stlstm_output,
                  min_bytes=5 * B * C * H * W * 4)  # reads x_o, h_o, o_conv, last_conv; writes h
    cell = Case("stlstm_cell", shape_name, dict(B=B, C=C, H=H, W=W, k=k, Cin=Cin),
                _rand_inputs({"x": (B, Cin, *S), "h": (B, C, *S), "c": (B, C, *S), "m": (B, C, *S),
                              "w_x": (7 * C, Cin, k, k), "w_h": (4 * C, C, k, k), "w_m": (3 * C, C, k, k),
                              "w_o": (C, 2 * C, k, k), "w_last": (C, 2 * C, 1, 1)},
                             weights=("w_x", "w_h", "w_m", "w_o", "w_last")),
                eager=stlstm_cell_eager, fused=stlstm_cell_fused, min_bytes=None, convs=True)
    return [memory, output, cell]


def stlstm_cell_eager(x, h, c, m, w_x, w_h, w_m, w_o, w_last):
    """One PredRNN-V2 ST-LSTM cell step (thuml), convolutions included, in eager PyTorch."""
    p = w_x.shape[-1] // 2
    x_cat, h_cat, m_cat = F.conv2d(x, w_x, padding=p), F.conv2d(h, w_h, padding=p), F.conv2d(m, w_m, padding=p)
    mem, delta_c, delta_m = reference.stlstm_memory(x_cat, h_cat, m_cat, c, m)
    h_new = reference.stlstm_output(x_cat, h_cat, F.conv2d(mem, w_o, padding=p), F.conv2d(mem, w_last))
    C = c.shape[1]
    return h_new, mem[:, :C], mem[:, C:], delta_c, delta_m


def stlstm_cell_fused(x, h, c, m, w_x, w_h, w_m, w_o, w_last):
    """The same step on predkern's two stages. On a GPU conv_o and conv_last run as one conv (one
    launch fewer); on a CPU, where the step is bound by conv FLOPs, the zero-padded k x k conv_last
    would cost more than the launch it saves, so they stay two convs."""
    p = w_x.shape[-1] // 2
    x_cat, h_cat, m_cat = F.conv2d(x, w_x, padding=p), F.conv2d(h, w_h, padding=p), F.conv2d(m, w_m, padding=p)
    mem, delta_c, delta_m = ops.stlstm_memory(x_cat, h_cat, m_cat, c, m)
    if mem.is_cuda:
        w_both = torch.cat([w_o, F.pad(w_last, (p, p, p, p))], dim=0)
        o_conv, last_conv = F.conv2d(mem, w_both, padding=p).chunk(2, dim=1)
    else:
        o_conv, last_conv = F.conv2d(mem, w_o, padding=p), F.conv2d(mem, w_last)
    C = c.shape[1]
    return ops.stlstm_output(x_cat, h_cat, o_conv, last_conv), mem[:, :C], mem[:, C:], delta_c, delta_m


def _convlstm_cell_case(shape_name, B, C, H, W, k, Cin):
    S = (H, W)
    return Case("convlstm_cell", shape_name, dict(B=B, C=C, H=H, W=W, k=k, Cin=Cin),
                _rand_inputs({"x": (B, Cin, *S), "h": (B, C, *S), "c": (B, C, *S), "w_x": (4 * C, Cin, k, k),
                              "w_h": (4 * C, C, k, k)}, weights=("w_x", "w_h")),
                eager=functools.partial(convlstm_cell, reference.convlstm_gates),
                fused=functools.partial(convlstm_cell, ops.convlstm_gates), min_bytes=None, convs=True)


def convlstm_cell(gates, x, h, c, w_x, w_h):
    """One ConvLSTM cell step (OpenSTL's: conv_x(x) + conv_h(h), gates i f g o, no forget bias),
    convolutions included, with the gate math of `gates` (eager reference or predkern's op)."""
    p = w_x.shape[-1] // 2
    return gates(F.conv2d(x, w_x, padding=p), c, F.conv2d(h, w_h, padding=p))


# name -> (B, C, H, W, kernel size, input channels: patch_size**2 * frame channels); the ConvLSTM
# cell's too (OpenSTL's Moving MNIST config is PredRNN's)
STLSTM_SHAPES = {
    "tiny": (1, 4, 4, 4, 3, 4),
    "small": (4, 16, 16, 16, 5, 16),
    "mnist": (16, 128, 16, 16, 5, 16),  # PredRNN Moving MNIST config (64x64 frames, patch 4)
    "kth": (4, 128, 32, 32, 5, 16),     # PredRNN KTH config (128x128 frames, patch 4)
}


def _decoupling_cases(shape_name, terms, B, C, H, W):
    """The loss over `terms` (layer, step) pairs of (B, C, H, W) deltas: stacked along N in one
    call, and one call per term averaged as the official model does (equal terms: same value)."""
    make = _rand_inputs({"delta_c": (terms * B, C, H, W), "delta_m": (terms * B, C, H, W)})
    dims = dict(terms=terms, B=B, C=C, H=H, W=W)

    def per_term(loss):
        def fn(delta_c, delta_m):
            return torch.stack([loss(c, m) for c, m in zip(delta_c.chunk(terms), delta_m.chunk(terms))]).mean()
        return fn

    # one pass reads both deltas; the loss itself is a scalar
    nbytes = 2 * terms * B * C * H * W * 4
    return [Case("decoupling_loss", shape_name, dims, make, eager=reference.decoupling_loss,
                 fused=ops.decoupling_loss, min_bytes=nbytes),
            Case("decoupling_loss_per_term", shape_name, dims, make, eager=per_term(reference.decoupling_loss),
                 fused=per_term(ops.decoupling_loss), min_bytes=None)]


def _prednet_cases(shape_name, B, C, H, W, clip_max):
    """The error units of one PredNet layer: in training (output_mode 'error': e and its per-sample
    mean, two launches on the GPU for the deterministic mean) and without the mean (e alone, one launch)."""
    dims = dict(B=B, C=C, H=H, W=W, clip_max=clip_max)
    make = _rand_inputs({"a": (B, C, H, W), "a_hat": (B, C, H, W)})
    out = []
    for op, return_mean in (("prednet_error", True), ("prednet_error_no_mean", False)):
        opts = dict(relu_a_hat=True, clip_max=clip_max, return_mean=return_mean)
        out.append(Case(op, shape_name, dims, make,
                        eager=functools.partial(reference.prednet_error, **opts),
                        fused=functools.partial(ops.prednet_error, **opts),
                        min_bytes=5 * B * C * H * W * 4))  # reads a, a_hat; writes e (2) and a_hat_out
    return out


def _train_case(op, plain_class, fused_class, shape_name, B, C, layers, size, k, frames_in, frames_out):
    """A training iteration of a recurrent frame predictor (reverse scheduled sampling) on
    patch-space frames (size x size, patch 4, 1 image channel): the peer's model in eager
    PyTorch (predkern.bench.plain_*) against predkern.nn's with the very same weights, passed as
    inputs (torch.func.functional_call). Output: the loss (PredRNN-V2: MSE + 0.1 * decoupling)."""
    from predkern.nn import expand_mask

    T, patch = frames_in + frames_out, 4
    configs = SimpleNamespace(img_width=size * patch, img_channel=1, patch_size=patch, filter_size=k, stride=1,
                              layer_norm=0, input_length=frames_in, total_length=T, reverse_scheduled_sampling=1,
                              decouple_beta=0.1)
    plain, fused = plain_class(layers, [C] * layers, configs), fused_class(layers, [C] * layers, configs)
    shapes = {name: tuple(p.shape) for name, p in plain.named_parameters()}
    weights = _rand_inputs(shapes, weights=tuple(shapes))

    def make(device, dtype, requires_grad, generator):
        inputs = weights(device, dtype, requires_grad, generator)
        frames = torch.rand(B, T, size, size, patch * patch, generator=generator)
        mask = (torch.rand(B, T - 2, generator=generator) < 0.5).float()
        mask = expand_mask(mask, size, size, patch * patch).contiguous()  # thuml's layout, as its users pass it
        return {**inputs, "frames": frames.to(device, dtype), "mask": mask.to(device, dtype)}

    def loss_of(model):
        def fn(frames, mask, **params):
            return torch.func.functional_call(model, params, (frames, mask))[1]
        return fn

    return Case(op, shape_name, dict(B=B, C=C, layers=layers, H=size, W=size, k=k, T=T), make,
                eager=loss_of(plain), fused=loss_of(fused), min_bytes=None, modes=TRAIN_MODES, convs=True)


def _predrnn_v2_train_case(shape_name, *dims):
    from predkern.bench.plain_predrnn import PlainPredRNNv2
    from predkern.nn import PredRNNv2

    return _train_case("predrnn_v2_train", PlainPredRNNv2, PredRNNv2, shape_name, *dims)


def _convlstm_train_case(shape_name, *dims):
    from predkern.bench.plain_convlstm import PlainConvLSTM
    from predkern.nn import ConvLSTM

    return _train_case("convlstm_train", PlainConvLSTM, ConvLSTM, shape_name, *dims)


def _prednet_train_case(shape_name, B, T, channels, H, W, stack):
    """A PredNet training iteration (coxlab's kitti_train.py: output_mode "error", L_0 loss, 3x3
    convs, A_hat clipped at 1): the plain model (predkern/bench/plain_prednet.py, a conv per gate)
    against predkern.nn.PredNet on its very weights. Output: the loss."""
    from predkern.bench.plain_prednet import PlainPredNet, plain_loss
    from predkern.nn import PredNet, prednet_loss

    L = len(stack)
    sizes = (stack, stack, (3,) * (L - 1), (3,) * L, (3,) * L)
    plain, fused = PlainPredNet(*sizes), PredNet(*sizes, output_mode="error")
    shapes = {name: tuple(p.shape) for name, p in plain.named_parameters()}
    weights = _rand_inputs(shapes, weights=tuple(shapes))
    layer_weights = [1.0] + [0.0] * (L - 1)

    def make(device, dtype, requires_grad, generator):
        frames = torch.rand(B, T, channels, H, W, generator=generator).to(device, dtype)
        return {**weights(device, dtype, requires_grad, generator), "frames": frames}

    def plain_fn(frames, **params):
        errors = torch.func.functional_call(plain, params, (frames,))["error"]
        return plain_loss(torch.stack(errors, 1), layer_weights)

    def fused_fn(frames, **params):
        return prednet_loss(torch.func.functional_call(fused, params, (frames,)), "L_0")

    return Case("prednet_train", shape_name, dict(B=B, T=T, C=channels, H=H, W=W, layers=L), make,
                eager=plain_fn, fused=fused_fn, min_bytes=None, modes=TRAIN_MODES, convs=True)


# name -> (B, T, image channels, H, W, stack sizes)
PREDNET_TRAIN_SHAPES = {
    "small": (2, 4, 1, 16, 16, (1, 4, 8)),
    "train": (4, 10, 3, 64, 80, (3, 16, 32, 64)),            # CPU-sized: KITTI at half size, thinner
    "kitti_train": (4, 10, 3, 128, 160, (3, 48, 96, 192)),  # coxlab's KITTI model (kitti_train.py)
}
# name -> (B, C, layers, patch-space frame size, kernel, input frames, predicted frames), for every
# model's training iteration
TRAIN_SHAPES = {
    "small": (2, 8, 2, 8, 3, 3, 3),
    "train": (4, 32, 3, 16, 5, 10, 10),        # CPU-sized (issue 5's CPU target for PredRNN-V2)
    "mnist_train": (16, 128, 4, 16, 5, 10, 10),  # the paper's Moving MNIST config (64x64 frames, patch 4)
}
# name -> (terms, B, C, H, W)
DECOUPLING_SHAPES = {
    "tiny": (1, 1, 4, 4, 4),
    "small": (8, 4, 32, 16, 16),
    "mnist": (76, 16, 128, 16, 16),  # PredRNN-V2 Moving MNIST: (T-1) * L = 19 * 4 terms
}
# name -> (B, C, H, W, clip_max)
PREDNET_SHAPES = {
    "tiny": (1, 4, 4, 4, 1.0),
    "small": (4, 16, 32, 40, None),
    "kitti0": (4, 3, 128, 160, 1.0),   # PredNet KITTI layer 0 (pixels, A_hat clipped at 1)
    "kitti1": (4, 48, 64, 80, None),   # PredNet KITTI layer 1
}
OPS = ("convlstm_gates", "stlstm_memory", "stlstm_output", "stlstm_cell", "decoupling_loss",
       "decoupling_loss_per_term", "prednet_error", "prednet_error_no_mean", "convlstm_cell", "predrnn_v2_train",
       "convlstm_train", "prednet_train")
DEFAULT_SHAPES = ("tiny", "small")
FULL_SHAPES = ("tiny", "mnist", "large", "kth", "kitti0", "kitti1", "train", "mnist_train", "kitti_train")
ALL_SHAPES = {**CONVLSTM_SHAPES, **STLSTM_SHAPES, **DECOUPLING_SHAPES, **PREDNET_SHAPES, **TRAIN_SHAPES,
              **PREDNET_TRAIN_SHAPES}


def cases(shapes=DEFAULT_SHAPES, op_names=None) -> list[Case]:
    """The cases of `op_names` (default all) at those of `shapes` each op defines."""
    unknown = set(shapes) - set(ALL_SHAPES)
    if unknown:
        raise ValueError(f"unknown shapes {sorted(unknown)}; known: {sorted(ALL_SHAPES)}")
    unknown_ops = set(op_names or ()) - set(OPS)
    if unknown_ops:
        raise ValueError(f"unknown ops {sorted(unknown_ops)}; known: {OPS}")
    out = [_convlstm_case(s, *CONVLSTM_SHAPES[s]) for s in shapes if s in CONVLSTM_SHAPES]
    out += [c for s in shapes if s in STLSTM_SHAPES for c in _stlstm_cases(s, *STLSTM_SHAPES[s])]
    out += [_convlstm_cell_case(s, *STLSTM_SHAPES[s]) for s in shapes if s in STLSTM_SHAPES]
    out += [c for s in shapes if s in DECOUPLING_SHAPES for c in _decoupling_cases(s, *DECOUPLING_SHAPES[s])]
    out += [c for s in shapes if s in PREDNET_SHAPES for c in _prednet_cases(s, *PREDNET_SHAPES[s])]
    for op, make, table in (("predrnn_v2_train", _predrnn_v2_train_case, TRAIN_SHAPES),
                            ("convlstm_train", _convlstm_train_case, TRAIN_SHAPES),
                            ("prednet_train", _prednet_train_case, PREDNET_TRAIN_SHAPES)):
        if op_names is None or op in op_names:  # built only when asked for: each builds two models
            out += [make(s, *table[s]) for s in shapes if s in table]
    return [c for c in out if op_names is None or c.op in op_names]


def contenders(device_type: str, requested_backends=None, compile: bool = True) -> list[str]:
    """eager, compile (unless `compile` is false), then `predkern-<backend>` for each backend that
    runs on this device (the Triton interpreter is a correctness tool, not a contender). A
    requested backend that is unknown, or cannot run here, raises ValueError."""
    names = ["eager", "compile"] if compile else ["eager"]
    fused = ("cpu", "cuda", "triton")
    unknown = set(requested_backends or ()) - set(fused)
    if unknown:
        raise ValueError(f"unknown backends {sorted(unknown)}; the fused ones are {list(fused)} "
                         f"(eager PyTorch, the reference, is always timed)")
    for backend in requested_backends or ():
        reason = backends.unavailable_reason(backend, device_type)
        if backend == "triton" and device_type != "cuda":
            reason = "it is timed on a GPU only (on a CPU it runs in its interpreter, a correctness tool)"
        if reason is not None:
            raise ValueError(f"backend {backend!r} cannot run on {device_type}: {reason}")
    for backend in fused:
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
        return torch.compile(case.eager, fullgraph=True)
    return case.fused


def contender_backend(contender: str):
    """The context that selects a predkern contender's backend (a no-op for the others); entered
    around a burst of timed calls, not per call, so its cost is not timed."""
    if contender.startswith("predkern-"):
        return backends.use(contender.removeprefix("predkern-"))
    return contextlib.nullcontext()

