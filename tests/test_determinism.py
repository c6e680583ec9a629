"""Same bits, whatever the circumstances: repeated runs on every backend, any CPU thread count,
and several Python threads (or CUDA streams) calling the ops at once, against one call at a time."""
import threading

import pytest
import torch

import predkern
from predkern import backends
from conftest import backend_device
from op_table import OPS, inputs
from oracle import outputs_and_grads

# Big enough for at::parallel_for to split the rows (and the reductions) over threads.
SHAPE = dict(B=4, C=16, spatial=(24, 20))
OPTIONS = {"stlstm_memory": {"return_deltas": True}, "prednet_error": {"return_mean": True, "clip_max": 1.0},
           "convlstm_gates": {"gate_act": "hard_sigmoid", "forget_bias": 1.0}}


def _run(op, backend, x, device_threads=None):
    if device_threads is not None:
        torch.set_num_threads(device_threads)
    return outputs_and_grads(getattr(predkern, op), x, OPTIONS.get(op), backend=backend)


def _assert_same_bits(got, want, what):
    for k, w in want.items():
        assert torch.equal(got[k], w), f"{what}: {k} differs (max |diff| {(got[k] - w).abs().max().item():.3g})"


@pytest.mark.parametrize("op", list(OPS))
def test_same_bits_on_repeated_runs(backend, op):
    x = inputs(op, **SHAPE, device=backend_device(backend))
    first = _run(op, backend, x)
    for _ in range(2):
        _assert_same_bits(_run(op, backend, x), first, f"{op} on {backend}")


@pytest.mark.parametrize("op", list(OPS))
def test_same_bits_for_any_thread_count(op):
    """The cpu backend's outputs and every input gradient (the parameter gradients are sums over
    batch and space) do not depend on how many threads run them."""
    if backends.unavailable_reason("cpu", "cpu"):
        pytest.skip("no compiled extension")
    x = inputs(op, **SHAPE)
    threads = torch.get_num_threads()
    try:
        want = _run(op, "cpu", x, 1)
        for n in (2, 3, 8):
            _assert_same_bits(_run(op, "cpu", x, n), want, f"{op} with {n} threads")
    finally:
        torch.set_num_threads(threads)


def _concurrently(fn, jobs):
    """fn(job) for every job, from one Python thread per job released together."""
    results, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def worker(k):
        try:
            start.wait()
            results[k] = fn(jobs[k])
        except BaseException as e:  # re-raised in the main thread
            errors.append(e)

    workers = [threading.Thread(target=worker, args=(k,)) for k in range(len(jobs))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("op", list(OPS))
def test_python_threads_at_once_equal_one_at_a_time(backend, op):
    device = backend_device(backend)
    if backend == "triton" and device == "cpu":
        pytest.skip("the Triton interpreter is not thread-safe (it swaps triton.language's "
                    "functions while a kernel runs); compiled Triton kernels are tested on a GPU")
    jobs = [inputs(op, B=2, C=8, spatial=(12, 10), seed=seed, device=device) for seed in range(6)]
    want = [_run(op, backend, x) for x in jobs]
    for _ in range(3):
        got = _concurrently(lambda x: _run(op, backend, x), jobs)
        for k, (g, w) in enumerate(zip(got, want)):
            _assert_same_bits(g, w, f"{op} on {backend}, thread {k}")


@pytest.mark.gpu
@pytest.mark.parametrize("op", list(OPS))
def test_cuda_streams_at_once_equal_one_at_a_time(backend, op):
    """Each job on its own stream, launched back to back without synchronizing in between."""
    if backend_device(backend) != "cuda":
        pytest.skip("CUDA streams need a CUDA backend")
    jobs = [inputs(op, **SHAPE, seed=seed, device="cuda") for seed in range(4)]
    want = [_run(op, backend, x) for x in jobs]
    torch.cuda.synchronize()
    streams = [torch.cuda.Stream() for _ in jobs]
    got = []
    for stream, x in zip(streams, jobs):
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            got.append(_run(op, backend, x))
    torch.cuda.synchronize()
    for k, (g, w) in enumerate(zip(got, want)):
        _assert_same_bits(g, w, f"{op} on {backend}, stream {k}")
