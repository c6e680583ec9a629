"""Every Triton kernel the ops launch compiles for an H100 (sm_90), here without a GPU.

The other Triton tests run the kernels through Triton's interpreter, which never compiles them:
a kernel could pass them all and still fail to compile on the GPU. tests/triton_sm90.py drives
the ops over their options, dtypes, layouts and gradient subsets and compiles each launch to a
cubin with Triton's own specialization for sm_90; it runs twice at once (the 32-bit and the
64-bit offset paths), each in a fresh process without TRITON_INTERPRET. With PREDKERN_RUN_SLOW=1
the sweep is the full one (minutes)."""
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

triton = pytest.importorskip("triton")
# one pytest-xdist worker compiles once for all of them (README's `--dist loadgroup`)
pytestmark = pytest.mark.xdist_group("sm90_compile")

from conftest import RUN_SLOW  # noqa: E402

WORKER = pathlib.Path(__file__).with_name("triton_sm90.py")
# every kernel defined in predkern/triton (the @triton.jit functions named *_kernel)
KERNELS = sorted(name for src in (pathlib.Path(__file__).parents[1] / "predkern" / "triton").glob("*.py")
                 for name in re.findall(r"@triton\.jit\ndef (\w+_kernel)\(", src.read_text()))


def _launcher_internals_missing():
    """The worker drives Triton's launcher internals (Triton 3.6 to 3.9 have them); None when present."""
    try:
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource, make_backend  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
        triton.knobs.compilation  # noqa: B018
        from triton.backends import backends as installed
    except (ImportError, AttributeError) as e:
        return str(e)
    if "nvidia" not in installed:
        return "its NVIDIA backend"
    return None if hasattr(JITFunction, "_pack_args") else "JITFunction._pack_args"


@pytest.fixture(scope="module")
def compiles(tmp_path_factory):
    missing = _launcher_internals_missing()
    if missing:
        pytest.skip(f"Triton {triton.__version__} lacks the launcher internals the sm_90 compile drives: {missing}")
    tmp = tmp_path_factory.mktemp("sm90")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")  # compiled here, not found in a cache
    runs = []
    for name, flags in (("offsets32", []), ("offsets64", ["--large"])):
        out = tmp / f"{name}.json"
        args = [sys.executable, str(WORKER), str(out), *flags, *(["--full"] if RUN_SLOW else [])]
        runs.append((out, subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True)))
    records = []
    try:
        for out, proc in runs:
            log = proc.communicate(timeout=1800)[0]
            assert proc.returncode == 0, f"{WORKER.name} {out.stem} failed:\n{log[-4000:]}"
            records += json.loads(out.read_text())
    finally:  # a failed or timed-out pass leaves no worker behind
        for _, proc in runs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return records


@pytest.mark.parametrize("kernel", KERNELS)
def test_compiles_for_sm90(compiles, kernel):
    mine = [r for r in compiles if r["kernel"] == kernel]
    assert mine, f"{kernel} was never launched by the sweep"
    if "LARGE" in mine[0]["constexprs"]:
        assert {r["constexprs"]["LARGE"] for r in mine} == {"False", "True"}
    failed = [r for r in mine if r["error"]]
    assert not failed, f"{len(failed)} of {len(mine)} compiles failed, first:\n" \
        f"{failed[0]['case']}\n{failed[0]['constexprs']} {failed[0]['pointers']}\n{failed[0]['error']}"


@pytest.mark.parametrize("kernel", KERNELS)
def test_no_register_spills_below_float64(compiles, kernel):
    """Spills (local memory) would slow the memory-bound kernels; float64 is for tests only."""
    mine = [r for r in compiles if r["kernel"] == kernel and r["case"]["dtype"] != "torch.float64"]
    assert mine
    spilling = [r for r in mine if r.get("local", 0) or r.get("stack", 0)]
    assert not spilling, f"{len(spilling)} of {len(mine)} spill, first: {spilling[0]}"


def test_every_launch_fixes_fp_fusion(compiles):
    """Triton's default flips in 3.10 (3.9 warns about it): the numerics must not follow it."""
    implicit = sorted({r["kernel"] for r in compiles if not r["fp_fusion_given"]})
    assert not implicit, f"launched without enable_fp_fusion: {implicit}"


def test_the_kernels_are_found():
    assert len(KERNELS) >= 12 and "_convlstm_gates_fwd_kernel" in KERNELS
