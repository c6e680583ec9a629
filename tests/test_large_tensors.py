"""64-bit indexing (SPEC.md section 5): tensors over 2^31 elements. On a GPU these run with the
`gpu` tests; on the CPU they need ~11 GB and minutes, so they are `slow` (PREDKERN_RUN_SLOW=1).
Each op is checked where the offsets pass 2^31, against the reference on slices cut from there
(the ops are elementwise per position, or reduce per sample)."""
import importlib
import os

import pytest
import torch

import predkern
from predkern import backends, reference
from conftest import RUN_SLOW, backend_device
from op_table import OPS, inputs
from oracle import check

BIG = 2**31


def _skip_unless_runnable(backend, gib):
    device = backend_device(backend)
    if backend == "reference":
        pytest.skip("the reference backend is eager PyTorch: its indexing is torch's")
    if device == "cpu":
        if backend == "triton":
            pytest.skip("the Triton interpreter would take hours over 2^31 elements")
        if not RUN_SLOW:
            pytest.skip("slow and memory-hungry on the CPU: run with PREDKERN_RUN_SLOW=1")
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 2**30
        if available < gib:
            pytest.skip(f"needs {gib} GiB of free memory, {available:.0f} GiB free")
    return device


def test_convlstm_gates_beyond_2_31_elements(backend):
    """gates_x (2, 4C, 128*128) in float16 has 2^31 + 131072 elements; the o block of the last
    channels of sample 1 lies past 2^31. Forward (and on a GPU, backward) there and at the start."""
    device = _skip_unless_runnable(backend, gib=10)
    C, S = 16385, (128, 128)
    gen = torch.Generator(device=device).manual_seed(0)
    gates_x = torch.randn(2, 4 * C, *S, generator=gen, device=device, dtype=torch.float16)
    c = torch.randn(2, C, *S, generator=gen, device=device, dtype=torch.float16)
    assert gates_x.numel() > BIG
    grad = device == "cuda"
    gates_x.requires_grad_(grad)
    with backends.use(backend):
        h, c_new = predkern.convlstm_gates(gates_x, c, forget_bias=1.0)
    if grad:
        (d_gates_x,) = torch.autograd.grad((h, c_new), gates_x, (torch.ones_like(h), torch.ones_like(c_new)))
    for b, chans in ((0, slice(0, 3)), (1, slice(C - 3, C))):
        blocks = [gates_x[b:b + 1, k * C + chans.start:k * C + chans.stop].detach() for k in range(4)]
        x = torch.cat(blocks, 1).double().requires_grad_(grad)
        h_ref, c_ref = reference.convlstm_gates(x, c[b:b + 1, chans].double(), forget_bias=1.0)
        torch.testing.assert_close(h[b:b + 1, chans].double(), h_ref, rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(c_new[b:b + 1, chans].double(), c_ref, rtol=2e-3, atol=2e-3)
        if grad:
            (dx_ref,) = torch.autograd.grad((h_ref, c_ref), x, (torch.ones_like(h_ref), torch.ones_like(c_ref)))
            got = torch.cat([d_gates_x[b:b + 1, k * C + chans.start:k * C + chans.stop] for k in range(4)], 1)
            torch.testing.assert_close(got.double(), dx_ref, rtol=2e-3, atol=2e-3)


def test_prednet_error_beyond_2_31_elements(backend):
    """a, a_hat (1, 1, 2^30 + 8) in float16: e has 2^31 + 16 elements and e_mean reduces all of
    them in one sample. The last positions of e, and e_mean, against float64."""
    device = _skip_unless_runnable(backend, gib=14)
    n = 2**30 + 8
    gen = torch.Generator(device=device).manual_seed(1)
    # filled in place: a float16 randn would pass through a float32 tensor of the full size
    a = torch.empty(1, 1, n, device=device, dtype=torch.float16).uniform_(generator=gen)
    a_hat = torch.empty(1, 1, n, device=device, dtype=torch.float16).normal_(generator=gen)
    with backends.use(backend):
        e, a_hat_out, e_mean = predkern.prednet_error(a, a_hat, clip_max=1.0, return_mean=True)
    assert e.numel() > BIG
    tail = slice(n - 5, n)
    e_ref, a_hat_ref = reference.prednet_error(a[..., tail].double(), a_hat[..., tail].double(), clip_max=1.0)
    torch.testing.assert_close(e[..., tail].double(), e_ref, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(a_hat_out[..., tail].double(), a_hat_ref, rtol=1e-3, atol=1e-3)
    # e_mean = sum |clip(relu(a_hat)) - a| / (2 C n): summed in float64, in chunks
    chunk = 2**25
    total = sum((a_hat[..., k:k + chunk].double().clamp(0, 1) - a[..., k:k + chunk].double()).abs().sum().item()
                for k in range(0, n, chunk))
    torch.testing.assert_close(e_mean.double().cpu(), torch.tensor([total / (2 * n)], dtype=torch.float64),
                               rtol=1e-3, atol=0)


TRITON_OPTIONS = {"convlstm_gates": {"forget_bias": 1.0, "gate_act": "hard_sigmoid"},
                  "stlstm_memory": {"return_deltas": True}, "prednet_error": {"return_mean": True, "clip_max": 1.0}}


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("op", list(OPS))
def test_triton_64_bit_offsets_on_small_inputs(monkeypatch, op, layout):
    """The Triton kernels' 64-bit offset variants (LARGE), forced on small inputs by lowering the
    int32 limit the launchers compare against: the same results as the 32-bit ones, here (under
    the interpreter) and where the variants compile for a GPU."""
    if backends.unavailable_reason("triton", backend_device("triton")):
        pytest.skip(backends.unavailable_reason("triton", backend_device("triton")))
    import predkern.triton._common as common

    for module in [common] + [importlib.import_module(f"predkern.triton.{name}") for name in OPS]:
        if hasattr(module, "_INT32_MAX"):
            monkeypatch.setattr(module, "_INT32_MAX", 0)
    x = inputs(op, B=2, C=5, spatial=(3, 7), device=backend_device("triton"),
               views={arg.name: layout for arg in OPS[op]})
    check("triton", op, x, TRITON_OPTIONS.get(op))
