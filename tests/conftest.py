import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, settings

# Without a GPU, Triton kernels run on CPU tensors through its interpreter; the variable must be
# set before triton is first imported (predkern imports it lazily).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from predkern import backends  # noqa: E402

HAS_GPU = torch.cuda.is_available()

# Under pytest-xdist (README's `-n auto`) every worker's torch starts one thread per core: on
# CI's two cores two workers' OpenMP threads spin-waited for each other (the model tests took
# 55 cpu-s instead of 31). Each worker takes its share of the threads; the tests about thread
# counts set their own.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, torch.get_num_threads() // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))


RUN_SLOW = os.environ.get("PREDKERN_RUN_SLOW") == "1"

# Fuzzing profiles (tests/test_fuzz.py): `ci` is small and derandomized, so a CI run is
# reproducible; `long` (PREDKERN_FUZZ=long) draws fresh examples, for runs on a GPU. The
# backend fixture is a name, not state, so sharing it across examples is safe.
_FUZZ = dict(deadline=None, database=None, print_blob=True,
             suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                    HealthCheck.data_too_large])
settings.register_profile("ci", max_examples=150, derandomize=True, **_FUZZ)
settings.register_profile("long", max_examples=3000, **_FUZZ)
settings.load_profile(os.environ.get("PREDKERN_FUZZ", "ci"))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="slow (minutes): run with PREDKERN_RUN_SLOW=1")
    for item in items:
        if "gpu" in item.keywords and not HAS_GPU:
            item.add_marker(skip_gpu)
        if "slow" in item.keywords and not RUN_SLOW:
            item.add_marker(skip_slow)


def backend_device(backend: str) -> str:
    return "cuda" if backend == "cuda" or (backend == "triton" and HAS_GPU) else "cpu"


def backend_params():
    """Every backend, marked gpu where it needs one; missing ones skip with the reason."""
    params = []
    for name in backends.BACKENDS:
        device = backend_device(name)
        marks = [pytest.mark.gpu] if device == "cuda" else []
        if name == "triton" and device == "cpu":
            marks.append(pytest.mark.interpreter)
        if name == "reference":
            marks.append(pytest.mark.reference)
        params.append(pytest.param(name, marks=marks, id=name))
    return params


@pytest.fixture(params=backend_params())
def backend(request):
    name = request.param
    reason = backends.unavailable_reason(name, backend_device(name))
    if reason is not None:
        if os.environ.get("CI") == "true" and name in ("reference", "cpu", "triton") and not HAS_GPU:
            pytest.fail(f"backend {name} must run in CI but is unavailable: {reason}")
        pytest.skip(reason)
    return name


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _working_directory(request):
    """Twice in stop 18's CI the process's working directory no longer existed midway through the
    suite (every later test that starts a process failed: `os.getcwd()` in multiprocessing, oneMKL
    unable to load torch in a subprocess); the cause was not found, and the same tests run alone,
    or in order outside CI, kept it. This names the test after which it happened (a warning in the
    summary) and moves back to the root directory, so later tests run as they would."""
    _return_to_root(request, "before")
    yield
    _return_to_root(request, "during")


def _return_to_root(request, when):
    try:
        os.getcwd()
    except FileNotFoundError:
        warnings.warn(f"the working directory was deleted {when} {request.node.nodeid}; back to the root")
        os.chdir(request.config.rootpath)
