"""What is alive at a call's peak of GPU memory: one bench case's call (as `predkern bench` makes
it) per contender under the CUDA caching allocator's history, replayed to its highest point; the
blocks alive there, grouped by the line of predkern (or of the plain model) that allocated them.
Allocations made by the autograd engine (the backward) have no Python frame and are grouped as
such, by size.

    python benchmarks/memory_peak.py [--shapes mnist_train] [--ops predrnn_v2_train]
                                     [--mode "forward+backward (bf16 autocast)"] [--top 15]

With --device cpu, where no allocator history exists, it prints each contender's peak only, from
the profiler's memory events (an op's allocations counted at its start, so the peak is at op
granularity); --merged-convs runs predkern's models on the GPU's code path there (conv_o and
conv_last as one conv), whose memory the GPU measured.
"""
import argparse
import collections
import contextlib
import functools
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from predkern.bench import cases as bench_cases  # noqa: E402
from predkern.bench import runner  # noqa: E402

MiB = 2**20


def where(frames):
    """The innermost frame in predkern (but the bench harness) or in a model file, else torch's."""
    for f in frames:
        name = f.get("filename", "")
        if "predkern" in name and "/bench/runner.py" not in name:
            return f"{name.split('predkern/')[-1]}:{f.get('line')} ({f.get('name')})"
    for f in frames:
        if "torch/" in f.get("filename", ""):
            return f"torch {f['filename'].split('torch/')[-1]}:{f.get('line')}"
    return None


def peak_of(trace):
    """(peak bytes over the trace's start, {addr: (size, frames)} alive at the peak)."""
    live, total, best, at_best = {}, 0, 0, {}
    for e in trace:
        action = e["action"]
        if action == "alloc":
            live[e["addr"]] = (e["size"], e.get("frames", []))
            total += e["size"]
            if total > best:
                best, at_best = total, dict(live)
        elif action == "free_completed" and e["addr"] in live:
            total -= live.pop(e["addr"])[0]
    return best, at_best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="mnist_train")
    p.add_argument("--ops", default="predrnn_v2_train")
    p.add_argument("--mode", default=bench_cases.AUTOCAST)
    p.add_argument("--contenders", default=None, help="default: eager,predkern-<device>")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--device", default="cuda")
    p.add_argument("--merged-convs", action="store_true")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.contenders = args.contenders or f"eager,predkern-{device.type}"
    if device.type == "cpu":
        return cpu_peaks(args)
    for case, contender, step in warmed_steps(args, device):
        torch.cuda.synchronize()
        torch.cuda.memory._record_memory_history(max_entries=2_000_000, stacks="python")
        step()
        torch.cuda.synchronize()
        snap = torch.cuda.memory._snapshot()
        torch.cuda.memory._record_memory_history(enabled=None)
        trace = snap["device_traces"][device.index or 0]
        best, alive = peak_of(trace)
        groups = collections.Counter()
        counts = collections.Counter()
        for size, frames in alive.values():
            key = where(frames) or f"(no Python frame: autograd engine) blocks of {size / MiB:.2f} MiB"
            groups[key] += size
            counts[key] += 1
        print(f"\n== {case.name} {args.mode} {contender}: peak {best / MiB:.1f} MiB above the call's start, "
              f"{len(alive)} blocks alive there")
        for key, size in groups.most_common(args.top):
            print(f"  {size / MiB:9.1f} MiB  {counts[key]:5d}x  {key}")


def warmed_steps(args, device):
    """(case, contender, step) for each bench case and contender, inside the contender's backend
    choice and after one warm-up call (workspaces, cuDNN plans): step() makes one more call as
    `predkern bench` makes it."""
    for case in bench_cases.cases(tuple(args.shapes.split(",")), args.ops.split(",")):
        gen = torch.Generator().manual_seed(0)
        inputs = case.make_inputs(device, torch.float32, args.mode != "forward", gen)
        grads = None
        for contender in args.contenders.split(","):
            fn = bench_cases.callable_for(case, contender)
            with bench_cases.contender_backend(contender):
                if grads is None and args.mode != "forward":
                    grads = runner._output_grads(case, inputs, fn, gen, args.mode)
                step = functools.partial(runner._step, case, fn, args.mode, inputs, grads)
                step()
                yield case, contender, step


def cpu_peaks(args):
    """{(case name, contender): peak bytes above the call's start}, each printed."""
    from unittest import mock

    from predkern.nn import stlstm_cell

    peaks = {}
    merged = mock.patch.object(stlstm_cell, "_merges_convs", lambda mem: True) if args.merged_convs \
        else contextlib.nullcontext()
    with merged:
        for case, contender, step in warmed_steps(args, torch.device("cpu")):
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
                step()
            peaks[case.name, contender] = best = _peak_of_profile(prof)
            label = " (merged convs)" if args.merged_convs and contender.startswith("predkern") else ""
            print(f"{case.name} {args.mode} {contender}{label}: peak {best / MiB:.1f} MiB above the call's start")
    return peaks


def _peak_of_profile(prof):
    # allocations inside an op count toward its self usage (at its start); frees outside any op
    # are [memory] events of their own
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    total = best = 0
    for e in events:
        total += e.self_cpu_memory_usage
        best = max(best, total)
    return best


if __name__ == "__main__":
    main()
