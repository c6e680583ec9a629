"""The CUDA kernels (csrc/cuda/*.cu) run here, on the CPU, through the test suite; and the CPU
kernels run it under AddressSanitizer.

No GPU is needed: tests/cuda_emulation/build.py compiles the .cu sources with g++ against an
emulated CUDA runtime (blocks in turn, a block's threads as fibers that meet at __syncthreads) and
links them in place of the CPU kernels, so every test of the cpu backend, run in a subprocess
against that build, checks the CUDA kernels' indexing, layouts, dtypes, reductions and gradients
against the float64 reference. Every run starts each tensor torch.empty makes as NaN
(cuda_emulation/poison_empty.py), so an output element no kernel writes cannot pass. The runs:
  index32   the whole CPU test suite (but Triton's, and the reference backend's, ONNX export's and
            the meta device's, which run the reference, and the benchmark harness's), threads in order;
  index64   the op tests on the 64-bit index path, threads between barriers in reverse order;
  asan      the op tests under AddressSanitizer (any access past a tensor aborts), threads shuffled
            between barriers and at most two blocks per launch (the grid-stride loops turn); not the
            gradchecks, which run one small shape many times over (the decoupling loss's took 35 s);
  cpu_asan_<capability>  the op tests on the real CPU kernels under AddressSanitizer (vector
            tails, threads), once per instruction set they are compiled for (ATEN_CPU_CAPABILITY
            picks the variant, as it picks torch's own): the rest of the suite runs only the one
            this CPU supports best.
The float32 digits of a 2^25-long mean (test_mean_of_a_long_row_keeps_its_digits) run in index32
only: emulated, that one test took 50 s on the 64-bit path and 145 s under AddressSanitizer.
What the emulation cannot show: the device's own arithmetic (fast-math intrinsics, fma
contraction), true concurrency between warps, and speed; those are owed to the `gpu` tests.
"""
import importlib.util
import os
import re
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
_spec = importlib.util.spec_from_file_location("cuda_emulation_build",
                                               os.path.join(TESTS, "cuda_emulation", "build.py"))
emu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(emu)

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux") or emu.cuda_include_dir() is None,
                       reason="needs Linux (ucontext) and the CUDA toolkit's headers (cuda_fp16.h)"),
    # one pytest-xdist worker builds once and runs them all (README's `--dist loadgroup`)
    pytest.mark.xdist_group("cuda_emulation"),
]

OP_TESTS = [os.path.join(TESTS, f) for f in (
    "test_convlstm_gates.py", "test_stlstm_ops.py", "test_decoupling_loss.py", "test_prednet_error.py",
    "test_fuzz.py", "test_bad_input.py", "test_determinism.py", "test_output_layout.py",
    "test_stlstm_cell.py", "test_nn_cells.py")]

# the op tests of the cpu backend (the emulated CUDA kernels, or the CPU kernels under ASAN)
CPU_OPS = "cpu and not triton and not long_row"
CAPABILITIES = ("avx512", "avx2", "default")  # ATEN_CPU_CAPABILITY's names of the CPU kernels' variants

RUNS = {  # run: (build variant, its settings, pytest selection), the longest first (see suite_runs)
    "index32": ("index32", {"PK_EMU_ORDER": "forward"},
                # the reference backend's cases, onnx export and the meta device run the reference:
                # nothing emulated to test there
                ["-m", "not interpreter and not gpu and not reference",
                 "-k", "not triton and not onnx and not meta_device",
                 "--ignore", os.path.join(TESTS, "test_triton_compile.py"),
                 "--ignore", os.path.join(TESTS, "test_examples.py"),
                 # the harness's own tests (52 s emulated): its cases are the op tests' ops
                 "--ignore", os.path.join(TESTS, "test_bench_report.py"),
                 "--ignore", os.path.abspath(__file__), TESTS]),
    "asan": ("asan", {"PK_EMU_ORDER": "shuffle", "PK_EMU_MAX_BLOCKS": "2"},
             ["-k", f"{CPU_OPS} and not compile and not gradcheck", *OP_TESTS]),
    "index64": ("index64", {"PK_EMU_ORDER": "reverse"}, ["-k", CPU_OPS, *OP_TESTS]),
    **{f"cpu_asan_{cap}": ("cpu_asan", {"ATEN_CPU_CAPABILITY": cap}, ["-k", f"{CPU_OPS} and not compile", *OP_TESTS])
       for cap in CAPABILITIES},
}

# Each op forward and backward on the cpu backend runs the CUDA kernels, and launches what its
# docs say: one kernel each way, but for the two reductions' second, fixed-order pass (the
# decoupling loss's mean over rows; prednet_error's per-sample mean over chunks).
ROUTING = textwrap.dedent("""
    import os, sys, torch, predkern
    from predkern import ops
    from op_table import OPS, inputs
    assert predkern.__file__.startswith(sys.argv[1]), predkern.__file__
    if sys.argv[2] == "cpu":  # the real CPU kernels: nothing emulated, the variant asked for runs
        assert torch.backends.cpu.get_cpu_capability() == os.environ["ATEN_CPU_CAPABILITY"].upper()
        sys.exit()
    launches = torch.ops.predkern_emulation.launches
    expected = {"convlstm_gates": (1, 1), "stlstm_memory": (1, 1), "stlstm_output": (1, 1),
                "decoupling_loss": (2, 1), "prednet_error": (1, 1), "prednet_error_mean": (2, 1)}
    for case, (fwd, bwd) in expected.items():
        op = case.removesuffix("_mean")
        x = {k: v.requires_grad_() for k, v in inputs(op).items()}
        options = {"return_mean": True} if case.endswith("_mean") else {}
        with predkern.backends.use("cpu"):
            n0 = launches()
            out = getattr(ops, op)(**x, **options)
            n1 = launches()
            out = out if isinstance(out, tuple) else (out,)
            sum(o.float().sum() for o in out if o.numel()).backward()
        assert (n1 - n0, launches() - n1) == (fwd, bwd), (case, n1 - n0, launches() - n1)
""")


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda_emulation")
    r = subprocess.run([sys.executable, os.path.join(TESTS, "cuda_emulation", "build.py"), str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-8000:]
    return out


def environment(emulated, variant, settings):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(emulated / variant), TESTS, os.path.join(TESTS, "cuda_emulation")])
    env.update(settings)
    for name in [k for k in env if k.startswith("PYTEST_XDIST_")]:  # a plain pytest run, not an xdist worker
        del env[name]
    if emu.VARIANTS[variant][0] == "cuda":
        # torch's own ops on one thread: the emulator runs a launch's blocks on one core anyway, and
        # the runs go two at a time (suite_runs); the cpu_asan runs keep their threads (they test them)
        env["OMP_NUM_THREADS"] = "1"
    if variant.endswith("asan"):
        env.update(emu.asan_environment())
    return env


def _unsupported(settings):
    """Why this CPU cannot run the capability a run asks for, or None."""
    wanted = settings.get("ATEN_CPU_CAPABILITY")
    best = torch.backends.cpu.get_cpu_capability().lower()
    if wanted in (None, "default", best):
        return None
    if best not in CAPABILITIES or CAPABILITIES.index(wanted) < CAPABILITIES.index(best):
        return f"this CPU (or ATEN_CPU_CAPABILITY) allows {best}, not {wanted}"
    return None


def _run_suite(emulated, run, cwd):
    """The routing check, then the pytest selection, of one run: (skip reason or None, routing run,
    pytest run)."""
    variant, settings, selection = RUNS[run]
    if not (emulated / variant).exists():
        return f"the {variant} build was skipped (the compiler has no AddressSanitizer runtime)", None, None
    unsupported = _unsupported(settings)
    if unsupported:
        return unsupported, None, None
    env = environment(emulated, variant, settings)
    # From a directory outside the checkout, so `predkern` is the emulated copy.
    kernels = emu.VARIANTS[variant][0]
    routing = subprocess.run([sys.executable, "-c", ROUTING, str(emulated / variant), kernels], cwd=cwd, env=env,
                             capture_output=True, text=True, timeout=300)
    if routing.returncode != 0:
        return None, routing, None
    suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "poison_empty",
                            "-c", os.path.join(ROOT, "pyproject.toml"), "--rootdir", ROOT, *selection],
                           cwd=cwd, env=env, capture_output=True, text=True, timeout=1500)
    return None, routing, suite


@pytest.fixture(scope="module")
def suite_runs(emulated, tmp_path_factory):
    """Every run, two at a time, the longest first: the emulator runs a launch's blocks one after
    another on one core, so a run leaves the other core mostly idle (CI: 7.8 minutes one at a time
    on two cores)."""
    def run_one(run):
        return run, _run_suite(emulated, run, tmp_path_factory.mktemp(f"run_{run}"))

    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(pool.map(run_one, RUNS))


@pytest.mark.parametrize("run", list(RUNS))
def test_instrumented_build_passes_the_cpu_tests(suite_runs, run):
    skipped, routing, suite = suite_runs[run]
    if skipped:
        pytest.skip(skipped)
    assert routing.returncode == 0, routing.stdout[-3000:] + routing.stderr[-3000:]
    assert suite.returncode == 0, suite.stdout[-6000:] + suite.stderr[-6000:]
    passed = int(re.search(r"(\d+) passed", suite.stdout).group(1))
    assert passed >= 300, suite.stdout[-2000:]  # the selection did select the suite
