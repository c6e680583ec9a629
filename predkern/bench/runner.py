"""Times one (case, mode, contender) after checking its result against the float64 reference."""
from __future__ import annotations

import contextlib
import ctypes
import statistics
import sys
import time

import torch

from predkern.bench.cases import AUTOCAST, Case, callable_for, contender_backend

TOLERANCE = 1e-5  # float32 max abs error relative to the output's scale (SPEC.md section 5)
TF32_TOLERANCE = 5e-3  # the same for convolutions in TF32 (11 significant bits per operand)
AUTOCAST_TOLERANCE = 3e-2  # the same under bf16 autocast (8 significant bits per conv operand)


def tolerance(case: Case, mode: str, device) -> float:
    """The max error a contender may have: float32's, or where convolutions run in lower precision
    (bf16 autocast; on a GPU TF32, which PyTorch allows for cuDNN convolutions by default and the
    benchmark leaves as users have it), that precision's."""
    if mode == AUTOCAST:
        return AUTOCAST_TOLERANCE
    if case.convs and torch.device(device).type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TF32_TOLERANCE
    return TOLERANCE


def steady_cpu_allocator() -> str | None:
    """Fixes glibc malloc's mmap threshold at its maximum (32 MiB) and turns off heap trimming, so
    memory one contender frees is reused by the next rather than returned to the OS and page-faulted
    in again. The rounds interleave contenders whose allocation patterns differ, which a training
    loop (one pattern, repeated) does not; on a GPU PyTorch's caching allocator does the same.
    For every contender alike, and for the rest of the process; returns what was set, for the
    report (None where not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    if not (libc.mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)):
        return None
    return "glibc malloc: mmap threshold 32 MiB, no heap trimming"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _flat_outputs(out):
    return [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if torch.is_tensor(t)]


def _leaves(inputs):
    return [t for t in inputs.values() if torch.is_tensor(t) and t.requires_grad]


def _output_grads(case, inputs, fn, generator, mode):
    with torch.no_grad():
        outs = _flat_outputs(_forward(fn, mode, inputs))
    return [torch.randn(o.shape, generator=generator).to(o) for o in outs]


def _autocast(mode, inputs):
    """bf16 autocast on the inputs' device for AUTOCAST, else nothing."""
    if mode != AUTOCAST:
        return contextlib.nullcontext()
    device = next(t.device for t in inputs.values() if torch.is_tensor(t))
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _forward(fn, mode, inputs):
    with _autocast(mode, inputs):
        return fn(**inputs)


def _step(case, fn, mode, inputs, grads):
    """One call as a user makes it: inference under no_grad, or forward then backward."""
    if mode == "forward":
        with torch.no_grad():
            return fn(**inputs)
    outs = _flat_outputs(_forward(fn, mode, inputs))
    return torch.autograd.grad(outs, _leaves(inputs), grads)


def reference_outputs(case, mode, inputs, grads) -> list:
    """The float64 reference's outputs (and input grads), without autocast, on the inputs' device:
    a model's float64 reference would take minutes on a GPU machine's CPU."""
    ref_inputs = {k: (v.detach().double().requires_grad_(v.requires_grad) if torch.is_tensor(v) else v)
                  for k, v in inputs.items()}
    ref = _flat_outputs(case.eager(**ref_inputs))
    if mode != "forward":
        ref += list(torch.autograd.grad(ref, _leaves(ref_inputs), [g.double() for g in grads]))
    return [r.detach() for r in ref]


def max_error(case, fn, mode, inputs, grads, ref=None) -> float:
    """Max abs error of outputs (and input grads) against the float64 reference (`ref`, or
    computed here), over its scale."""
    got = _flat_outputs(_forward(fn, mode, inputs))
    if mode != "forward":
        got += list(torch.autograd.grad(got, _leaves(inputs), grads))
    if ref is None:
        ref = reference_outputs(case, mode, inputs, grads)
    worst = 0.0
    for g, r in zip(got, ref):
        if r.numel():
            scale = max(1.0, r.abs().max().item())
            worst = max(worst, (g.detach().double() - r).abs().max().item() / scale)
    return worst


def saved_bytes(case, fn, mode, inputs) -> int:
    """Bytes autograd keeps for backward (distinct storages), as saved_tensors_hooks see them."""
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _forward(fn, mode, inputs)
    return sum(storages.values())


def device_profile(case, fn, mode, sets, grads, device, calls: int = 10) -> tuple:
    """(kernels launched per call, device time per call in s, {kernel name: its device time per call
    in s}) on a GPU, from the profiler: the sum of the durations of a call's kernels, the mean over
    `calls` calls on rotated inputs. Unlike the wall time, it leaves out the host's cost per call,
    which for a small tensor can exceed the kernel's own time. (None, None, None) on a CPU."""
    if device.type != "cuda":
        return None, None, None
    from torch.profiler import ProfilerActivity, profile

    _step(case, fn, mode, sets[0], grads)
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(calls):
            _step(case, fn, mode, sets[i % len(sets)], grads)
        _sync(device)
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    launches = len(kernels) / calls
    per_kernel = {}
    for e in kernels:
        per_kernel[e.name] = per_kernel.get(e.name, 0.0) + e.time_range.elapsed_us() * 1e-6 / calls
    return (int(launches) if launches.is_integer() else launches), sum(per_kernel.values()), per_kernel


def rotation(nbytes: int | None, device) -> int:
    """How many input sets to rotate over: 3, or on a GPU as many as fill 3x its L2 cache (at most
    64), so that a small op's inputs come from memory, as in training, and not from the cache."""
    device = torch.device(device)
    if device.type != "cuda" or not nbytes:
        return 3
    l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 64 * 2**20)
    return int(min(64, max(3, -(-3 * l2 // nbytes))))


def peak_bytes(case, fn, mode, inputs, grads, device) -> int | None:
    """GPU memory one call allocates at its peak beyond what was allocated before it (its
    outputs, saved tensors and temporaries; GPU only, from the caching allocator's counters)."""
    if device.type != "cuda":
        return None
    _sync(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    _step(case, fn, mode, inputs, grads)
    _sync(device)
    return torch.cuda.max_memory_allocated(device) - before


def clone_baseline(nbytes: int, device, repeats: int = 50) -> dict:
    """A clone() moving `nbytes` (reading nbytes/2, writing nbytes/2), timed as the contenders
    are: sources rotated (`rotation`), calls under a millisecond timed in bursts; the median, and
    on a GPU the device time too (`device_profile`). On the CPU the copy goes into a kept buffer: a
    fresh allocation of this size would be page-faulted in on every call, and the baseline would
    measure the kernel's page faults instead of memory."""
    device = torch.device(device)
    src = [torch.randn(max(1, nbytes // 8), device=device) for _ in range(rotation(nbytes, device))]
    dst = torch.empty_like(src[0])
    copy = (lambda t: dst.copy_(t)) if device.type == "cpu" else (lambda t: t.clone())
    for t in src:
        copy(t)
    _sync(device)
    t0 = time.perf_counter()
    copy(src[0])
    _sync(device)
    burst = _burst(time.perf_counter() - t0)
    times = []
    for i in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        for k in range(burst):
            copy(src[(i * burst + k) % len(src)])
        _sync(device)
        times.append((time.perf_counter() - t0) / burst)
    out = dict(median_s=statistics.median(times))
    if device.type == "cuda":
        sets = [dict(t=t) for t in src]
        out["device_s"] = device_profile(None, lambda t: t.clone(), "forward", sets, None, device)[1]
    return out


def autograd_floor(device, repeats: int = 50, burst: int = 100) -> float:
    """Median wall time of `torch.autograd.grad` through one multiply of a 1-element tensor: what
    any forward+backward call pays here beyond its own work (the autograd engine; on a GPU, also
    its hand-over to the device's worker thread and back)."""
    device = torch.device(device)
    x = torch.ones(1, device=device, requires_grad=True)
    grad = torch.ones(1, device=device)
    times = []
    for i in range(repeats + 1):  # the first burst warms up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(burst):
            torch.autograd.grad(x * 2, x, grad)
        _sync(device)
        if i:
            times.append((time.perf_counter() - t0) / burst)
    return statistics.median(times)


def _burst(per_call_s: float) -> int:
    """Calls timed together so that a sample lasts about a millisecond (at most 100)."""
    return int(min(100, max(1, 1e-3 / max(per_call_s, 1e-9))))


def run_group(case: Case, contenders: list[str], mode: str, device, *, budget_s: float = 1.0,
              min_repeats: int = 10, max_repeats: int = 500, warmup: int = 3, rotate: int | None = None,
              seed: int = 0, note=lambda what: None) -> list[dict]:
    """Check every contender, then time them side by side: each round runs every contender in
    turn, so that all of them see the same machine state (allocator, clocks, other load). A
    contender's turn is one call, or for calls under a millisecond a burst of calls timed together
    (so a tiny call is not timed cold after the others polluted the caches), giving one sample of
    the mean call time. As many rounds as fit in `budget_s` (within [min_repeats, max_repeats]);
    medians reported. Rotating `rotate` input sets (default: `rotation`) keeps inputs out of cache,
    as in training. `note(what)` is told what runs now."""
    device = torch.device(device)
    rotate = rotate or rotation(case.min_bytes, device)
    # A fresh compile per case and mode: torch.compile's cache of one function over many shapes
    # would turn dynamic, or hit its recompile limit and silently fall back to eager.
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(seed)
    requires_grad = mode != "forward"
    sets = [case.make_inputs(device, torch.float32, requires_grad, gen) for _ in range(rotate)]
    grads = ref = None
    rows, timed = [], []
    for contender in contenders:
        fn = callable_for(case, contender)
        row = dict(case=case.name, op=case.op, shape=case.shape_name, dims=case.dims, mode=mode,
                   contender=contender, device=str(device), input_sets=rotate)
        rows.append(row)
        note(f"compiling and checking {contender}" if contender == "compile" else f"checking {contender}")
        try:
            with contender_backend(contender):
                if requires_grad and grads is None:
                    grads = _output_grads(case, sets[0], fn, gen, mode)
                if ref is None:  # once per case and mode: a model's float64 step is slow
                    ref = reference_outputs(case, mode, sets[0], grads)
                t0 = time.perf_counter()
                err = max_error(case, fn, mode, sets[0], grads, ref)
            if contender == "compile":
                row["compile_s"] = time.perf_counter() - t0  # first call: tracing and compiling
        except Exception as e:  # a contender that crashes is reported, not timed
            row.update(status="error", error=f"{type(e).__name__}: {e}")
            continue
        row["max_rel_error"] = err
        row["tolerance"] = limit = tolerance(case, mode, device)
        if not err <= limit:
            row.update(status="wrong", error=f"max error {err:.3g} x scale > {limit}")
            continue
        with contender_backend(contender):
            for i in range(warmup):
                _sync(device)
                t0 = time.perf_counter()
                _step(case, fn, mode, sets[i % rotate], grads)
                _sync(device)
                per_call = time.perf_counter() - t0
        timed.append((row, fn, per_call))
    if not timed:
        return rows
    note("timing " + ", ".join(row["contender"] for row, _, _ in timed))
    burst = {id(row): _burst(per_call) for row, _, per_call in timed}
    round_s = sum(per_call * burst[id(row)] for row, _, per_call in timed)
    repeats = int(min(max_repeats, max(min_repeats, budget_s / max(round_s, 1e-9))))
    samples = {id(row): [] for row, _, _ in timed}
    for i in range(repeats):
        for row, fn, _ in timed:
            n = burst[id(row)]
            with contender_backend(row["contender"]):
                _sync(device)
                t0 = time.perf_counter()
                for k in range(n):
                    _step(case, fn, mode, sets[(i + k) % rotate], grads)
                _sync(device)
                samples[id(row)].append((time.perf_counter() - t0) / n)
    for row, fn, _ in timed:
        row.update(status="ok", samples_s=samples[id(row)], median_s=statistics.median(samples[id(row)]))
        with contender_backend(row["contender"]):
            if requires_grad:
                row["saved_bytes"] = saved_bytes(case, fn, mode, sets[0])
            try:
                row["launches"], row["device_s"], row["kernels_s"] = device_profile(case, fn, mode, sets, grads, device)
            except Exception as e:  # the timings stand without it
                row["device_profile_error"] = f"{type(e).__name__}: {e}"
            row["peak_bytes"] = peak_bytes(case, fn, mode, sets[0], grads, device)
    return rows
