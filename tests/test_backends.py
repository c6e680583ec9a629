"""Backend discovery, the automatic choice, overrides, fallback warning and errors."""
import os
import subprocess
import sys
import threading
import warnings

import pytest
import torch

import predkern
from predkern import backends


def test_available_lists_reference_and_built_backends():
    names = backends.available()
    assert "reference" in names
    if backends._extension_error() is None:
        assert "cpu" in names
    for name, reason in backends.status().items():
        assert (reason is None) == (name in names)
        assert reason is None or isinstance(reason, str) and reason


def test_automatic_choice_for_cpu_tensors_is_cpu():
    if backends._extension_error() is not None:
        pytest.skip("no compiled extension")
    assert backends.select("cpu") == "cpu"


@pytest.mark.gpu
def test_automatic_choice_for_cuda_tensors_is_cuda_then_triton(monkeypatch):
    expected = "cuda" if backends.unavailable_reason("cuda", "cuda") is None else "triton"
    assert backends.select("cuda") == expected
    x, c = torch.randn(1, 8, 3, device="cuda"), torch.randn(1, 2, 3, device="cuda")
    h, _ = predkern.convlstm_gates(x, c)  # runs on the automatic choice, no warning
    torch.testing.assert_close(h, predkern.reference.convlstm_gates(x, c)[0])
    real = backends.unavailable_reason
    monkeypatch.setattr(backends, "unavailable_reason",
                        lambda name, device: "simulated" if name == "cuda" else real(name, device))
    monkeypatch.setattr(backends, "_chosen", {})  # a process that never had the cuda backend
    if real("triton", "cuda") is None:
        assert backends.select("cuda") == "triton"


def test_use_overrides_and_nests():
    with backends.use("reference"):
        assert backends.select("cpu") == "reference"
        with backends.use("cpu" if backends._extension_error() is None else "reference"):
            assert backends.requested() in ("cpu", "reference")
        assert backends.requested() == "reference"
    assert backends.requested() == backends._env_backend


def test_use_from_threads_leaves_no_choice_behind():
    """Thread A enters a block, B enters one, A leaves, then B: B's block keeps its backend to its
    end, and none is left requested after both. (Before, each block restored the value it found
    on entry, so B's exit restored A's "cpu" for the rest of the process: a later test on meta
    tensors failed with "backend 'cpu' was requested".)"""
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen = {}

    def a():
        with backends.use("cpu"):
            a_in.set()
            b_in.wait(10)
        a_out.set()

    def b():
        a_in.wait(10)
        with backends.use("reference"):
            b_in.set()
            a_out.wait(10)
            seen["b after a left"] = backends.requested()

    threads = [threading.Thread(target=f) for f in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"b after a left": "reference"}
    assert backends.requested() == backends._env_backend


def test_unknown_backend_name_raises():
    with pytest.raises(ValueError, match="one of"):
        with backends.use("tpu"):
            pass


def test_requested_backend_that_cannot_run_raises():
    x = torch.randn(1, 8, 3)
    with backends.use("cuda"):
        with pytest.raises(RuntimeError, match="'cuda' was requested"):
            predkern.convlstm_gates(x, torch.randn(1, 2, 3))


def test_automatic_fallback_warns_once(monkeypatch):
    monkeypatch.setattr(backends, "_extension_error", lambda: "simulated: no extension")
    monkeypatch.setattr(backends, "_chosen", {})  # a process that never had the extension
    monkeypatch.setattr(backends, "_warned", set())
    x, c = torch.randn(1, 8, 3), torch.randn(1, 2, 3)
    with pytest.warns(RuntimeWarning, match="falling back to the pure-PyTorch reference"):
        h, _ = predkern.convlstm_gates(x, c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        predkern.convlstm_gates(x, c)  # no second warning
    torch.testing.assert_close(h, predkern.reference.convlstm_gates(x, c)[0])


def test_device_types_without_kernels(monkeypatch):
    """meta tensors (a model run for its shapes, or a FLOP count) take the reference silently;
    other device types (mps, xpu) fall back with a warning that names the device."""
    monkeypatch.setattr(backends, "_warned", set())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backends.select("meta") == "reference"
    with pytest.warns(RuntimeWarning, match=r"no fused backend for mps tensors \(predkern has kernels for cpu "
                      r"and cuda tensors only\); falling back"):
        assert backends.select("mps") == "reference"


@pytest.mark.parametrize("version, usable", [((3, 1), False), ((3, 5), False), ((3, 6), True), ((4, 0), True)])
def test_triton_older_than_the_minimum_is_unavailable(monkeypatch, version, usable):
    if backends._triton_error("cpu") is not None:
        pytest.skip(f"triton unavailable here: {backends._triton_error('cpu')}")
    monkeypatch.setattr(backends, "_triton_version", lambda: version)
    reason = backends.unavailable_reason("triton", "cuda")
    assert (reason is None) == usable
    if not usable:
        assert f"triton {version[0]}.{version[1]} is older than 3.6" in reason


def _run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)


def test_environment_variable_selects_backend():
    out = _run_python("from predkern import backends; print(backends.select('cpu'))",
                      PREDKERN_BACKEND="reference")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "reference"
    bad = _run_python("import predkern", PREDKERN_BACKEND="nonsense")
    assert bad.returncode != 0 and "PREDKERN_BACKEND" in bad.stderr


def test_package_works_without_triton_and_extension():
    """Simulate a bare machine: neither triton nor predkern._C importable."""
    code = ("import sys; sys.modules['triton'] = None; sys.modules['predkern._C'] = None\n"
            "import warnings, torch, predkern\n"
            "from predkern import backends\n"
            "assert backends.available() == ['reference'], backends.status()\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    h, c = predkern.convlstm_gates(torch.randn(2, 8, 3), torch.randn(2, 2, 3))\n"
            "assert any('falling back' in str(x.message) for x in w)\n"
            "print('ok', h.shape)")
    out = _run_python(code, PREDKERN_BACKEND="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_import_leaves_dynamo_unloaded_and_the_choice_marked_as_torch_would():
    """`import predkern` does not import torch._dynamo (half its import time), and the choice
    carries exactly what torch.compiler.assume_constant_result would have set on it."""
    out = _run_python("import sys, predkern; print('torch._dynamo' in sys.modules)")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"

    def probe():
        pass

    before = set(vars(probe))
    marked = torch.compiler.assume_constant_result(probe)
    added = {k: v for k, v in vars(marked).items() if k not in before}
    assert added and all(getattr(backends._choose, k, None) == v for k, v in added.items()), added


def test_compiled_function_follows_a_later_backend_switch():
    """A graph compiled under one backend is not reused under another: use() is guarded."""
    if backends._extension_error() is not None:
        pytest.skip("no compiled extension")
    x, c = torch.randn(1, 8, 3), torch.randn(1, 2, 3)
    compiled = torch.compile(lambda x, c: predkern.convlstm_gates(x, c)[0], fullgraph=True, backend="eager")
    with backends.use("cpu"):
        want = compiled(x, c)
    with backends.use("cuda"), pytest.raises(Exception, match="'cuda' was requested but cannot run"):
        compiled(x, c)
    with backends.use("reference"):
        torch.testing.assert_close(compiled(x, c), want)
    with backends.use("cpu"):
        torch.testing.assert_close(compiled(x, c), want)


@pytest.mark.parametrize("flag", ["dynamo exporter", "torchscript exporter"])
def test_onnx_export_flags_force_the_reference(monkeypatch, flag):
    """select reads both exporters' flags itself (torch.onnx.is_in_onnx_export() costs 1 us per
    op call once torch._dynamo has imported them), and they agree with that function."""
    from torch.onnx._internal.exporter import _flags
    from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
    if flag == "dynamo exporter":
        monkeypatch.setattr(_flags, "_is_onnx_exporting", True)
    else:
        monkeypatch.setattr(GLOBALS, "in_onnx_export", True)
    assert torch.onnx.is_in_onnx_export()
    assert backends.select("cpu") == "reference"
    assert backends.select_for(torch.zeros(1)) == "reference"
