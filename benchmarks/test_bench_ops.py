"""pytest-benchmark suite over the very cases `predkern bench` runs (predkern/bench/cases.py).

    pytest benchmarks/ --benchmark-only --benchmark-group-by=param:case,param:mode
Shapes: PREDKERN_BENCH_SHAPES (comma-separated; default: as `predkern bench`, the small default
set on a CPU, the --full set with the paper configs on a GPU); ops: PREDKERN_BENCH_OPS.
"""
import os

import pytest
import torch

from predkern.bench import cases, runner

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DEFAULT_SHAPES = cases.FULL_SHAPES if DEVICE == "cuda" else cases.DEFAULT_SHAPES  # training configs are for a GPU
SHAPES = os.environ.get("PREDKERN_BENCH_SHAPES", ",".join(DEFAULT_SHAPES)).split(",")
OPS = os.environ.get("PREDKERN_BENCH_OPS")
CASES = cases.cases(SHAPES, OPS.split(",") if OPS else None)
if DEVICE == "cpu":
    runner.steady_cpu_allocator()  # as `predkern bench` runs them


@pytest.mark.parametrize("contender", cases.contenders(torch.device(DEVICE).type))
@pytest.mark.parametrize("case,mode", [pytest.param(c, m, id=f"{c.name}-{m}") for c in CASES for m in c.modes])
def test_op(benchmark, case, mode, contender):
    device = torch.device(DEVICE)
    gen = torch.Generator().manual_seed(0)
    sets = [case.make_inputs(device, torch.float32, mode != "forward", gen)
            for _ in range(runner.rotation(case.min_bytes, device))]
    fn = cases.callable_for(case, contender)
    with cases.contender_backend(contender):
        grads = runner._output_grads(case, sets[0], fn, gen, mode) if mode != "forward" else None
        err = runner.max_error(case, fn, mode, sets[0], grads)
        assert err <= runner.tolerance(case, mode, device), f"{contender} is wrong: {err:.3g}"
        calls = iter(range(10**9))

        def step():
            runner._step(case, fn, mode, sets[next(calls) % len(sets)], grads)
            runner._sync(device)

        benchmark.extra_info.update(device=DEVICE, torch=torch.__version__, max_rel_error=err)
        benchmark.pedantic(step, warmup_rounds=3, rounds=30 if case.shape_name != "tiny" else 300)
