"""Where a call's host time goes: each op's forward on a tiny shape (B=1, C=4, 4x4), timed per
backend (mean host time per call over many calls, one synchronize at the end, so the kernels
overlap the host), then the slowest backend's calls under cProfile, the top entries by cumulative
time. For the Triton backend's host cost per call (~10x the CUDA backend's on the H200).

    python benchmarks/host_profile.py [--device cuda] [--calls 2000] [--top 25] [--backward]
    python benchmarks/host_profile.py --stub-triton-launch [--backward]   # no GPU needed

--backward times forward+backward (torch.autograd.grad of every output) instead of the forward
under no_grad. --stub-triton-launch runs the triton backend on CPU tensors with its kernel launches
replaced by nothing (no interpreter, nothing computed): the host time of its Python path alone.
"""
import argparse
import cProfile
import io
import os
import pstats
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]
import predkern  # noqa: E402
from op_table import OPS, inputs  # noqa: E402


def per_call(fn, calls, device):
    for _ in range(max(1, calls // 10)):  # warm-up
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - t0) / calls


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--backward", action="store_true", help="forward+backward instead of the forward")
    p.add_argument("--stub-triton-launch", action="store_true",
                   help="the triton backend on CPU tensors, its kernel launches stubbed out")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.stub_triton_launch:
        _stub_triton_launches()
        device = torch.device("cpu")
    backends = [b for b in predkern.backends.available() if b != "reference"] + ["reference"]
    slowest = None
    what = "forward+backward" if args.backward else "forward"
    print(f"host time per {what} call, B=1 C=4 4x4, {device}, mean of {args.calls} calls")
    for op in OPS:
        x = inputs(op, B=1, C=4, spatial=(4, 4), device=device)
        fn_op = getattr(predkern, op)
        for backend in backends:
            def call(backend=backend, fn_op=fn_op, x=x):
                with torch.no_grad(), predkern.backends.use(backend):
                    return fn_op(**x)

            def call_backward(backend=backend, fn_op=fn_op, x=x):
                leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
                with predkern.backends.use(backend):
                    out = fn_op(**leaves)
                    outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o is not None]
                    return torch.autograd.grad(outs, list(leaves.values()), [torch.ones_like(o) for o in outs])

            call = call_backward if args.backward else call
            try:
                t = per_call(call, args.calls, device)
            except Exception as e:  # a backend that cannot run these tensors
                print(f"  {op:16s} {backend:10s} not run: {type(e).__name__}: {str(e)[:80]}")
                continue
            print(f"  {op:16s} {backend:10s} {t * 1e6:8.1f} us")
            if backend != "reference" and (slowest is None or t > slowest[0]):
                slowest = (t, op, backend, call)
    if slowest is None:
        return
    t, op, backend, call = slowest
    print(f"\ncProfile of {op} on {backend} ({t * 1e6:.1f} us per call), top {args.top} by cumulative time:")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(args.calls):
        call()
    prof.disable()
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(args.top)
    print(s.getvalue())


def _stub_triton_launches():
    """Every Triton kernel launch does nothing, and the triton backend takes CPU tensors."""
    os.environ.pop("TRITON_INTERPRET", None)
    from triton.runtime import jit

    jit.JITFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    predkern.backends._triton_error = lambda device_type: None


if __name__ == "__main__":
    main()
