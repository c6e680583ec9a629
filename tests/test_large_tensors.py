"""64-bit indexing (SPEC.md section 5): tensors over 2^31 elements, for every op. On a GPU these run with the
`gpu` tests; on the CPU they need up to 16 GB and minutes, so they are `slow` (PREDKERN_RUN_SLOW=1).
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


# ST-LSTM: x_cat (1, 7, S) with 6S > 2^31 (channel blocks of one channel, S positions in 1-D), so
# stage 1's g' block (the last it reads; the backward also writes zeros to the o block) and stage 2's
# o block lie past 2^31 at the last positions.
ST_S = 358_000_000


def _filled(shape, device, gen, dtype=torch.float16):
    # filled in place: a float16 randn would pass through a float32 tensor of the full size
    return torch.empty(shape, device=device, dtype=dtype).normal_(generator=gen)


def _tail_check(got, want, tail, name):
    torch.testing.assert_close(got[..., tail].double(), want, rtol=2e-3, atol=2e-3, msg=name)


def test_stlstm_memory_beyond_2_31_elements(backend):
    device = _skip_unless_runnable(backend, gib=16)
    S = ST_S
    gen = torch.Generator(device=device).manual_seed(2)
    x_cat, h_cat, m_cat = (_filled((1, k, S), device, gen) for k in (7, 4, 3))
    c, m = _filled((1, 1, S), device, gen), _filled((1, 1, S), device, gen)
    assert 6 * S > BIG
    grad = device == "cuda"
    x_cat.requires_grad_(grad)
    with backends.use(backend):
        mem, delta_c, delta_m = predkern.stlstm_memory(x_cat, h_cat, m_cat, c, m, return_deltas=True)
        if grad:
            (d_x,) = torch.autograd.grad((mem, delta_m), x_cat, (torch.ones_like(mem), torch.ones_like(delta_m)))
    tail = slice(S - 5, S)
    x = x_cat[..., tail].detach().double().requires_grad_(grad)
    ref = reference.stlstm_memory(x, *(t[..., tail].double() for t in (h_cat, m_cat, c, m)), return_deltas=True)
    for name, g, r in zip(("mem", "delta_c", "delta_m"), (mem, delta_c, delta_m), ref):
        _tail_check(g, r, tail, name)
    if grad:
        (dx_ref,) = torch.autograd.grad((ref[0], ref[2]), x, (torch.ones_like(ref[0]), torch.ones_like(ref[2])))
        _tail_check(d_x, dx_ref, tail, "grad x_cat")  # its o block is the zeros written past 2^31


def test_stlstm_output_beyond_2_31_elements(backend):
    device = _skip_unless_runnable(backend, gib=14)
    S = ST_S
    gen = torch.Generator(device=device).manual_seed(3)
    x_cat, h_cat = _filled((1, 7, S), device, gen), _filled((1, 4, S), device, gen)
    o_conv, last_conv = _filled((1, 1, S), device, gen), _filled((1, 1, S), device, gen)
    assert 6 * S > BIG
    grad = device == "cuda"
    x_cat.requires_grad_(grad)
    with backends.use(backend):
        h = predkern.stlstm_output(x_cat, h_cat, o_conv, last_conv)
        if grad:
            (d_x,) = torch.autograd.grad(h, x_cat, torch.ones_like(h))
    tail = slice(S - 5, S)
    x = x_cat[..., tail].detach().double().requires_grad_(grad)
    h_ref = reference.stlstm_output(x, *(t[..., tail].double() for t in (h_cat, o_conv, last_conv)))
    _tail_check(h, h_ref, tail, "h")
    if grad:
        (dx_ref,) = torch.autograd.grad(h_ref, x, torch.ones_like(h_ref))
        _tail_check(d_x, dx_ref, tail, "grad x_cat")


def test_decoupling_loss_beyond_2_31_elements(backend):
    """delta_c, delta_m (1, 2, 2^30 + 8) in bfloat16 (a gradient element is about 1/n, below
    float16's range): the second row's reduction runs past 2^31. The loss against float64 sums
    (in chunks), and on a GPU the gradient's last positions."""
    device = _skip_unless_runnable(backend, gib=12)
    n = 2**30 + 8
    gen = torch.Generator(device=device).manual_seed(4)
    delta_c, delta_m = (_filled((1, 2, n), device, gen, torch.bfloat16) for _ in range(2))
    assert delta_c.numel() > BIG
    grad = device == "cuda"
    delta_c.requires_grad_(grad)
    with backends.use(backend):
        loss = predkern.decoupling_loss(delta_c, delta_m)
        if grad:
            (d_c,) = torch.autograd.grad(loss, delta_c)
    chunk, sums = 2**25, torch.zeros(2, 3, dtype=torch.float64)  # per row: c.c, m.m, c.m
    for k in range(0, n, chunk):
        a, b = delta_c[0, :, k:k + chunk].detach().double(), delta_m[0, :, k:k + chunk].double()
        sums += torch.stack([(a * a).sum(1), (b * b).sum(1), (a * b).sum(1)], 1).cpu()
    norm_c, norm_m, dot = sums[:, 0].sqrt(), sums[:, 1].sqrt(), sums[:, 2]
    cos = dot / (norm_c * norm_m)
    torch.testing.assert_close(loss.double().cpu(), cos.abs().mean(), rtol=1e-2, atol=0)
    if grad:
        # d|cos|/dc = sign(cos) (m / (|c||m|) - cos c / |c|^2), over the 2 rows of the mean
        tail = slice(n - 5, n)
        c_t, m_t = delta_c[0, :, tail].detach().double().cpu(), delta_m[0, :, tail].double().cpu()
        want = (cos.sign()[:, None] * (m_t / (norm_c * norm_m)[:, None] - cos[:, None] * c_t / sums[:, :1])) / 2
        torch.testing.assert_close(d_c[0, :, tail].double().cpu(), want, rtol=2e-2, atol=1e-14)
