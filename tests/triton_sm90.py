"""Compiles every Triton kernel launch of the ops for an H100 (sm_90) without a GPU.

Run as a script (tests/test_triton_compile.py does, in a fresh process: the tests run Triton
through its interpreter, which never compiles). It calls each op on the triton backend with
CPU tensors over a sweep of dtypes, layouts, options and gradient subsets; every launch is bound
and specialized by Triton's own launcher code for the sm_90 target and compiled to a cubin
instead of launched (outputs stay uninitialized: only the compile is checked). It writes one JSON
record per distinct compile: the kernel, its specialization, the error if any, and the registers
and spills cuobjdump reports.

    python tests/triton_sm90.py OUT.json [--full] [--large]

--large makes every launch of the option sweep take its 64-bit offset path (LARGE), as past
2**31 elements. Without --full the two passes (with and without --large) share the dtype sweep,
on 32-bit offsets; --full runs it whole in each pass, with shapes that specialize differently
and every gradient subset.
"""
import contextlib
import itertools
import json
import os
import pathlib
import re
import subprocess
import sys
import time
import traceback

import torch

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, compile as triton_compile, make_backend
from triton.runtime import jit as triton_jit

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import predkern  # noqa: E402
from predkern import backends  # noqa: E402
from predkern.triton import _common, decoupling_loss, prednet_error  # noqa: E402
from op_table import inputs  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)  # H100 and H200
BACKEND = make_backend(TARGET)
records = {}
case = {}  # the op call being swept, recorded with each compile it causes


def _resources(cubin: bytes) -> dict:
    """Registers and spill bytes of a cubin, from cuobjdump (shipped with Triton)."""
    tool = pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    path = pathlib.Path(os.environ.get("TMPDIR", "/tmp")) / f"predkern-sm90-{os.getpid()}.cubin"
    path.write_bytes(cubin)
    text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True).stdout
    path.unlink()
    found = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {k.lower(): int(v) for k, v in found.items()}


def _compile_instead_of_launch(self, *args, grid, warmup, **kwargs):
    """JITFunction.run's binding and specialization for TARGET, then a compile and no launch."""
    kwargs["debug"] = kwargs.get("debug", self.debug) or triton.knobs.runtime.debug
    for knob in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # Triton 3.9 adds them
        if hasattr(triton.knobs.compilation, knob):
            kwargs[knob] = getattr(triton.knobs.compilation, knob)
    binder = triton_jit.create_function_from_signature(self.signature, self.params, BACKEND)
    bound_args, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = self._pack_args(BACKEND, kwargs, bound_args, specialization, options)
    key = f"{self.fn.__name__} {signature} {constexprs} {attrs} {options}"
    if key in records:
        return None
    named = {self.params[path[0]].name: value for path, value in constexprs.items() if len(path) == 1}
    record = {"kernel": self.fn.__name__, "case": dict(case),
              "constexprs": {k: str(v) for k, v in named.items()},
              "pointers": {k: v for k, v in signature.items() if v.startswith("*")},
              "num_warps": options.num_warps, "fp_fusion_given": "enable_fp_fusion" in kwargs,
              "error": None}
    t0 = time.perf_counter()
    try:
        compiled = triton_compile(ASTSource(self, signature, constexprs, attrs), target=TARGET,
                                  options=options.__dict__)
        record.update(_resources(compiled.asm["cubin"]))
    except Exception:  # recorded, not raised: every other launch is still compiled
        record["error"] = traceback.format_exc(limit=-3)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    records[key] = record
    return None


def _backward(outputs, leaves, every_subset):
    """Gradients through each non-empty subset of the outputs (each kernel variant of a missing
    output gradient), or through all of them at once."""
    outputs = [o for o in outputs if o is not None and o.requires_grad]
    sizes = range(1, len(outputs) + 1) if every_subset else [len(outputs)]
    for k in sizes:
        for subset in itertools.combinations(outputs, k):
            loss = sum((o.float() * 1.5).sum() for o in subset)
            torch.autograd.grad(loss, leaves, allow_unused=True, retain_graph=True)


DTYPES = [(torch.float32, None), (torch.float64, None), (torch.float16, None), (torch.bfloat16, None),
          (torch.float16, torch.float32), (torch.bfloat16, torch.float32)]  # the autocast mix
# odd; the Moving MNIST config's tiles (C=128, 16x16); multiples of 16; no spatial dims (folded)
SHAPES = [(2, 3, (4, 5)), (2, 128, (16, 16)), (2, 16, (8, 8)), (3, 5, ())]
MAIN = ("gates_x", "gates_h", "c", "x_cat", "h_cat", "m_cat", "m", "o_conv", "last_conv", "delta_c",
        "delta_m", "a", "a_hat")


def _call(op, opts, optional, dtype=torch.float32, state_dtype=None, view="contiguous", shape=SHAPES[0],
          grads="each subset"):
    B, C, spatial = shape
    case.update(op=op, options=repr(opts), optional=optional, dtype=str(dtype), state_dtype=str(state_dtype),
                view=view, shape=repr(shape), grads=grads)
    x = inputs(op, B, C, spatial, dtype=dtype, state_dtype=state_dtype, views=dict.fromkeys(MAIN, view))
    for name in ("gates_h", "bias", "peephole"):
        if name in x and name not in optional:
            del x[name]
    leaves = [t.requires_grad_(grads is not None) for t in x.values()]
    out = getattr(predkern.ops, op)(**x, **opts)
    if grads is not None:
        _backward(out if isinstance(out, tuple) else (out,), leaves, grads == "each subset")


def _option_cases():
    """(op, options, optional tensors given) for every option combination of every op."""
    for k in range(4):
        for optional in itertools.combinations(("gates_h", "bias", "peephole"), k):
            for act in ("sigmoid", "hard_sigmoid"):
                yield "convlstm_gates", dict(gate_act=act), optional
    for return_deltas in (True, False):
        yield "stlstm_memory", dict(return_deltas=return_deltas), ()
    yield "stlstm_output", {}, ()
    yield "decoupling_loss", {}, ()
    for relu, clip, first, mean in itertools.product((True, False), (None, 1.0), ("pred", "target"), (True, False)):
        yield "prednet_error", dict(relu_a_hat=relu, clip_max=clip, first=first, return_mean=mean), ()


def option_sweep():
    """Every option combination in float32 at an odd shape, with and without gradients."""
    for op, opts, optional in _option_cases():
        _call(op, opts, optional)
        _call(op, opts, optional, grads=None)


def dtype_sweep(full, ops):
    """The first and the last option combination of each of `ops` in every dtype and layout, at the
    Moving MNIST tile shape (whose sizes and strides Triton specializes as multiples of 16).
    ``full`` adds the other shapes and every gradient subset."""
    by_op = {}
    for op, opts, optional in _option_cases():
        by_op.setdefault(op, []).append((opts, optional))
    for op in ops:
        ends = by_op[op][:1] + by_op[op][1:][-1:]
        for (opts, optional), (dtype, state_dtype), view, shape in itertools.product(
                ends, DTYPES, ("contiguous", "channels_last"), SHAPES if full else SHAPES[1:2]):
            if op == "decoupling_loss" and state_dtype is not None:
                continue  # one dtype for both deltas
            _call(op, opts, optional, dtype, state_dtype, view, shape, "each subset" if full else "all")


OPS = ("convlstm_gates", "stlstm_memory", "stlstm_output", "decoupling_loss", "prednet_error")
# Without --full the two passes share the dtype sweep (32-bit offsets: the 64-bit index arithmetic
# is not the dtypes' own), about evenly: one pass alone took 92-171 s on this VM's core.
DTYPE_SHARE = {False: ("stlstm_memory", "stlstm_output"), True: ("convlstm_gates", "decoupling_loss", "prednet_error")}


@contextlib.contextmanager
def offsets(large):
    """With `large`, every launch takes the 64-bit offsets of views past 2**31 elements."""
    modules = (_common, decoupling_loss, prednet_error)
    kept = [m._INT32_MAX for m in modules]
    if large:
        for m in modules:
            m._INT32_MAX = 0
    try:
        yield
    finally:
        for m, value in zip(modules, kept):
            m._INT32_MAX = value


def main(out_path, full, large):
    triton_jit.JITFunction.run = _compile_instead_of_launch
    backends._triton_error = lambda device_type: None  # CPU tensors stand in for CUDA ones
    with backends.use("triton"):
        with offsets(large):
            option_sweep()
            if full:
                dtype_sweep(full, OPS)
        if not full:
            dtype_sweep(full, DTYPE_SHARE[large])
    pathlib.Path(out_path).write_text(json.dumps(list(records.values()), indent=1))
    failed = sum(r["error"] is not None for r in records.values())
    print(f"{len(records)} compiles for sm_90, {failed} failed, "
          f"{sum(r['seconds'] for r in records.values()):.0f} s compiling")


if __name__ == "__main__":
    main(sys.argv[1], full="--full" in sys.argv[2:], large="--large" in sys.argv[2:])
