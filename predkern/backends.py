"""Which backend runs an op: what is available here, the automatic choice, and the override.

Backends: ``reference`` (pure PyTorch, always there), ``cpu`` and ``cuda`` (the compiled extension
predkern._C), ``triton`` (Triton kernels, Triton 3.6 or later; on CPU tensors only under
``TRITON_INTERPRET=1``).
Automatic choice: CUDA tensors -> cuda, else triton; CPU tensors -> cpu. When the automatic
choice is missing, predkern warns once and falls back to ``reference``. A requested backend (the
``PREDKERN_BACKEND`` environment variable, read at import, or ``with predkern.backends.use(name)``)
that cannot run raises instead. Whatever was chosen or requested, ``reference`` runs under
torch.onnx.export, forward-mode AD and nested torch.func gradients (see ``select``).
"""
from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
import sys
import threading
import warnings

import torch

BACKENDS = ("reference", "cpu", "cuda", "triton")


@functools.lru_cache(maxsize=None)
def _extension_error() -> str | None:
    try:
        import predkern._C  # noqa: F401  (importing registers the torch.ops.predkern kernels)
    except ImportError as e:
        return f"the compiled extension predkern._C is not importable ({e})"
    return None


# The oldest Triton whose compiler takes every predkern kernel (see pyproject.toml).
MIN_TRITON = (3, 6)


@functools.lru_cache(maxsize=None)
def _triton_version() -> tuple[int, ...] | None:
    """Triton's installed version from its metadata (no import), None when unknown."""
    for dist in ("triton", "pytorch-triton"):
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return tuple(int(part) for part in re.findall(r"\d+", version)[:2])
    return None


def _triton_error(device_type: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed"
    version = _triton_version()
    if version is not None and version < MIN_TRITON:
        return (f"triton {'.'.join(map(str, version))} is older than "
                f"{'.'.join(map(str, MIN_TRITON))}, the oldest that compiles predkern's kernels")
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "triton runs CPU tensors only under TRITON_INTERPRET=1"
    if device_type not in ("cpu", "cuda"):
        return f"triton does not run on {device_type} tensors"
    return None


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """None when `backend` can run tensors of `device_type` here, else why not."""
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if device_type != backend:
            return f"the {backend} backend does not run {device_type} tensors"
        error = _extension_error()
        if error:
            return error
        if backend == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(
                "predkern::convlstm_gates_forward", "CUDA"):
            return "predkern._C was built without its CUDA kernels (no CUDA torch or nvcc at build time)"
        return None
    if backend == "triton":
        return _triton_error(device_type)
    return f"unknown backend {backend!r}; expected one of {BACKENDS}"


def status() -> dict[str, str | None]:
    """Each backend with None if it runs here (triton: on the GPU if there is one), else why not."""
    gpu = torch.cuda.is_available()
    result = {}
    for name in BACKENDS:
        if name == "cuda" and not gpu:
            result[name] = "no CUDA GPU here (torch.cuda.is_available() is False)"
        elif name == "triton":
            result[name] = unavailable_reason(name, "cuda" if gpu else "cpu")
        else:
            result[name] = unavailable_reason(name, "cuda" if name == "cuda" else "cpu")
    return result


def available() -> list[str]:
    """The backends that can run here."""
    return [name for name, reason in status().items() if reason is None]


def _validated(name: str | None, source: str) -> str | None:
    if name is not None and name not in BACKENDS:
        raise ValueError(f"predkern: {source} must be one of {BACKENDS}, got {name!r}")
    return name


_env_backend = _validated(os.environ.get("PREDKERN_BACKEND") or None, "PREDKERN_BACKEND")
_override: str | None = None  # the newest running use() block's backend, read by select()
_blocks: list[tuple[object, str | None]] = []  # (token, backend) of each running use() block, oldest first
_blocks_lock = threading.Lock()
_warned: set[tuple[str, str]] = set()


@contextlib.contextmanager
def use(name: str):
    """Run the predkern ops inside the block on backend `name` (process-wide, nestable). Blocks
    that Python threads enter and leave in any order leave no choice behind once all have ended
    (restoring the value each found on entry would: thread A enters, B enters, A leaves, B
    leaves restores A's choice)."""
    global _override
    block = (object(), _validated(name, "the backend passed to use()"))  # unequal to any other block
    with _blocks_lock:
        _blocks.append(block)
        _override = name
    try:
        yield
    finally:
        with _blocks_lock:
            _blocks.remove(block)
            _override = _blocks[-1][1] if _blocks else None


def requested() -> str | None:
    """The backend the user asked for, if any: use() beats PREDKERN_BACKEND."""
    return _override or _env_backend


def select(device_type: str) -> str:
    """The backend that runs an op on tensors of `device_type`. Under torch.compile this function
    is traced: reading the requested backend here puts a guard on it, so a graph compiled under
    one backend is recompiled, not reused, under another; the choice itself is made once per graph.
    Under torch.onnx.export, forward-mode AD and torch.func transforms that differentiate twice,
    the reference, whatever backend was asked for (see _reference_forced)."""
    if _reference_forced():
        return "reference"
    return _choose(requested(), device_type)


def select_for(tensor: torch.Tensor) -> str:
    """select() for `tensor`'s device, its type read as is_cuda / is_cpu: building
    `tensor.device` cost as much as the rest of select."""
    return select("cuda" if tensor.is_cuda else "cpu" if tensor.is_cpu else tensor.device.type)


def _reference_forced() -> bool:
    """Whether the reference runs whatever backend was asked for.
    Under torch.onnx.export: ONNX has no predkern operators, and the reference's standard ones
    export (the exported graph runs elsewhere). The exporters' flags are read where
    torch.onnx.is_in_onnx_export() reads them, from their modules once imported (importing
    torch._dynamo imports them): that function imports them at each call, 1 us, three times the
    rest of `select`.
    Where the op's result will be differentiated other than once in reverse mode: forward-mode AD
    (dual tensors of torch.autograd.forward_ad; torch.func.jvp, jacfwd, hessian) or torch.func
    transforms nested to take a gradient of a gradient. The fused kernels have one backward and no
    forward-mode formula: dual tensors lost their tangent through them (a silent zero), and
    torch.func raised. The reference's standard ops are differentiable in every mode and order.
    (A double backward of the fused ops, create_graph=True, cannot be seen coming here: it raises
    when it reaches their backward.)"""
    if _forward_ad._current_level >= 0:  # inside a dual_level
        return True
    if _onnx_exporting():
        return True
    if _peek_functorch_stack() is None:  # no torch.func transform (the common case)
        return False
    from torch._C._functorch import TransformType
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
    kinds = [i.key() for i in retrieve_all_functorch_interpreters()]
    return TransformType.Jvp in kinds or kinds.count(TransformType.Grad) > 1


def _onnx_exporting() -> bool:
    flags = sys.modules.get("torch.onnx._internal.exporter._flags")
    torchscript = sys.modules.get("torch.onnx._internal.torchscript_exporter._globals")
    if flags is None and torchscript is None:
        return False
    try:
        return bool((flags is not None and flags._is_onnx_exporting)
                    or (torchscript is not None and torchscript.GLOBALS.in_onnx_export))
    except AttributeError:  # a torch whose exporters keep their flags elsewhere
        return torch.onnx.is_in_onnx_export()


# Evaluated once per compiled graph, not traced (see _choose below). Bound once: a lookup through
# torch.* per call doubled the cost of `select`.
_reference_forced._dynamo_marked_constant = True
_forward_ad = torch.autograd.forward_ad
_peek_functorch_stack = torch._C._functorch.peek_interpreter_stack


_AUTOMATIC = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}  # in order of preference


# (wanted, device_type) -> cpu or cuda, once chosen: the compiled extension, which decides them, is
# loaded or not for the life of the process. (Triton's availability follows TRITON_INTERPRET.)
_chosen: dict[tuple[str | None, str], str] = {}


def _choose(wanted: str | None, device_type: str) -> str:
    chosen = _chosen.get((wanted, device_type))
    if chosen is not None:
        return chosen
    backend = _choose_uncached(wanted, device_type)
    if backend in ("cpu", "cuda"):
        _chosen[wanted, device_type] = backend
    return backend


def _choose_uncached(wanted: str | None, device_type: str) -> str:
    if wanted is not None:
        reason = unavailable_reason(wanted, device_type)
        if reason is not None:
            raise RuntimeError(f"predkern: backend {wanted!r} was requested but cannot run: {reason}")
        return wanted
    if device_type == "meta":  # no data, nothing to fuse: the reference gives the shapes, silently
        return "reference"
    candidates = _AUTOMATIC.get(device_type, ())
    reasons = [] if candidates else ["predkern has kernels for cpu and cuda tensors only"]
    for name in candidates:
        reason = unavailable_reason(name, device_type)
        if reason is None:
            return name
        reasons.append(reason)
    if (device_type, reasons[0]) not in _warned:
        _warned.add((device_type, reasons[0]))
        warnings.warn(f"predkern: no fused backend for {device_type} tensors ({'; '.join(reasons)}); "
                      "falling back to the pure-PyTorch reference", RuntimeWarning, stacklevel=4)
    return "reference"


# What torch.compiler.assume_constant_result(_choose) does (dynamo evaluates it once per compiled
# graph, not tracing its look-ups of what is installed), without importing torch._dynamo, which
# takes half of `import predkern`.
_choose._dynamo_marked_constant = True
