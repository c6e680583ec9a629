"""`predkern bench` (the benchmark report) and `predkern info` (backends and why any is missing)."""
from __future__ import annotations

import argparse

import torch


def _info(_args) -> int:
    import predkern
    from predkern import backends

    triton = backends._triton_version()
    print(f"predkern {predkern.__version__}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda or 'none'} ({'GPU present' if torch.cuda.is_available() else 'no GPU'}), "
          f"triton {'.'.join(map(str, triton)) if triton else 'none'}, "
          f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
    status = backends.status()
    for name, reason in status.items():
        print(f"  {name:<10} {'available' if reason is None else 'missing: ' + reason}")
    wanted = backends.requested()
    if wanted:  # PREDKERN_BACKEND: every op call raises where it cannot run
        print(f"requested by PREDKERN_BACKEND: {wanted}"
              + ("" if status[wanted] is None else " (missing, so op calls raise instead of falling back)"))
    return 0


def _bench(args) -> int:
    from predkern.bench import cases, report

    if args.compare:
        print(report.compare(*args.compare))
        return 0
    device = _device(args.parser, args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    shapes = args.shapes.split(",") if args.shapes else (cases.FULL_SHAPES if args.full else cases.DEFAULT_SHAPES)
    try:
        data = report.run_all(device, shapes, op_names=args.ops.split(",") if args.ops else None,
                              backend_names=args.backends.split(",") if args.backends else None,
                              budget_s=args.budget, compile=not args.no_compile,
                              partial=lambda data: report.write(data, args.out, with_plots=False),
                              modes=args.modes.split(",") if args.modes else None)
    except ValueError as err:  # an unknown shape, op or backend: before anything is timed
        args.parser.error(str(err))
    paths = report.write(data, args.out)
    print("Median time per call (speedup over eager):\n")
    print(report.summary(data))
    print("\nwrote " + ", ".join(paths) + " (REPORT.md: every measurement, the method and the versions)")
    failed = [r for r in data["results"] if r["status"] != "ok"]
    return 1 if failed else 0


def _device(parser, name: str) -> torch.device:
    """--device as a torch.device the harness can time on, else a usage error (exit 2)."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be cpu or cuda (cuda:N for another GPU), got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {name}: no CUDA GPU here (torch.cuda.is_available() is False)")
    return device


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="predkern")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="time eager, torch.compile and the predkern backends; write a report")
    bench.add_argument("--device", help="cpu or cuda (default: cuda if present)")
    bench.add_argument("--full", action="store_true", help="the paper configs instead of the small default")
    bench.add_argument("--shapes", help="comma-separated shape names (tiny, small, mnist, large, kth, kitti0, "
                                        "kitti1, train, mnist_train, kitti_train)")
    bench.add_argument("--ops", help="comma-separated op names (default: all)")
    bench.add_argument("--backends", help="comma-separated predkern backends to time (default: all present)")
    bench.add_argument("--modes", help="comma-separated modes: forward, forward+backward, "
                                       "\"forward+backward (bf16 autocast)\" (default: all of each case)")
    bench.add_argument("--no-compile", action="store_true",
                       help="leave torch.compile out (compiling a whole model's training step takes minutes)")
    bench.add_argument("--budget", type=float, default=1.0, help="seconds of timed calls per contender")
    bench.add_argument("--out", default="bench-report", help="output folder (default: bench-report)")
    bench.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two results.json and exit")
    bench.set_defaults(func=_bench, parser=bench)
    info = sub.add_parser("info", help="the backends available here, and why any is missing")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
