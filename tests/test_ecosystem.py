"""predkern inside the tools users train with: DistributedDataParallel (gloo, two CPU processes),
torch.save / torch.load of whole modules and of state_dicts, `.to(dtype)` and deepcopy of a
patched model, CPU autocast (bfloat16) around a PredRNN-V2 training step, torch.compile, torch.jit.trace and
torch.export, torch.onnx.export, the meta device, activation checkpointing and saved-tensor
offload, and forward-mode AD."""
import copy
import datetime
import functools
import gc
import os
import re
import sys
import time
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import predkern
import predkern.nn as pknn
from predkern import backends
from conftest import RUN_SLOW, backend_device
from peers import PeerRecurrentModel, default_dtype

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def thuml_configs(**overrides):
    configs = dict(img_width=8, img_channel=1, patch_size=2, filter_size=3, stride=1, layer_norm=0,
                   input_length=3, total_length=5, reverse_scheduled_sampling=1, decouple_beta=0.1)
    configs.update(overrides)
    return SimpleNamespace(**configs)


def thuml_batch(B=2, T=5, size=4, channels=4, seed=0, dtype=torch.float64):
    """Patch-space frames (B, T, h, w, p*p*C) and a compact reverse-sampling mask (B, T-2)."""
    gen = torch.Generator().manual_seed(seed)
    frames = torch.rand(B, T, size, size, channels, generator=gen, dtype=dtype)
    mask = (torch.rand(B, T - 2, generator=gen) < 0.5).to(dtype)
    return frames, mask


def sgd_steps(model, batches, lr=0.1):
    """Plain SGD steps on `batches`; returns the losses."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for frames, mask in batches:
        optimizer.zero_grad()
        _, loss = model(frames, mask)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


# -- 1. DistributedDataParallel ------------------------------------------------------------------

DDP_WORLD = 2
DDP_TIMEOUT_S = 120.0  # generous: two interpreters importing torch on a 2-core machine take ~10 s


def _ddp_worker(rank, world_size, init_file, inputs_path, out_dir, sys_path):
    """One DDP rank (module level: spawn pickles it by name and re-imports this module). Loads the
    shared model and batches, trains on its half of each batch, saves its parameters and losses."""
    for entry in reversed(sys_path):  # spawn passes sys.path too; this makes it explicit
        if entry not in sys.path:
            sys.path.insert(0, entry)
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import predkern  # noqa: F811 - imported inside the child on purpose
    import predkern.nn as pknn  # noqa: F811

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
                            timeout=datetime.timedelta(seconds=60))
    try:
        inputs = torch.load(inputs_path, weights_only=False)
        model = pknn.PredRNNv2(2, [4, 4], inputs["configs"]).double()
        model.load_state_dict(inputs["state_dict"])
        ddp = DDP(model)
        halves = []
        for frames, mask in inputs["batches"]:
            n = frames.shape[0] // world_size
            halves.append((frames[rank * n:(rank + 1) * n], mask[rank * n:(rank + 1) * n]))
        losses = sgd_steps(ddp, halves, lr=inputs["lr"])
        torch.save({"params": {k: v.detach().clone() for k, v in model.named_parameters()},
                    "losses": torch.stack(losses), "backend": predkern.backends.select("cpu"),
                    "predkern_file": predkern.__file__},
                   os.path.join(out_dir, f"rank{rank}.pt"))
        # DDP (its Reducer) must go before the process group: torch 2.13's gloo DDP, even on a
        # plain-PyTorch model, hangs now and then when it is freed after destroy_process_group
        del ddp
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_spawned(fn, args, nprocs, timeout_s):
    """mp.spawn without hanging: a worker's exception fails the caller (ProcessRaisedException),
    and workers still running after `timeout_s` are killed and fail it too."""
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)
    deadline = time.monotonic() + timeout_s
    try:
        while not context.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                pytest.fail(f"{fn.__name__}: workers still running after {timeout_s:.0f} s (hang?)")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def test_predrnn_v2_ddp_two_processes_matches_single_process(tmp_path, monkeypatch):
    """DDP over two gloo CPU ranks, each with half of every batch, ends two SGD steps with the
    parameters of a single process on the full batches. Exact in float64 because (a) DDP
    averages the ranks' gradients and (b) the loss of a full batch is the mean of its two halves'
    losses: the MSE is a mean over elements, and the decoupling term a mean over the rows
    (layer, step, sample, channel) of the stacked deltas, each half holding the same number of
    rows of every (layer, step) term. (b) is checked directly below."""
    torch.manual_seed(0)
    configs = thuml_configs()
    model = pknn.PredRNNv2(2, [4, 4], configs).double()
    batches = [thuml_batch(B=4, seed=1), thuml_batch(B=4, seed=2)]
    lr = 0.1

    # (b): the full-batch loss is the mean of the half-batch losses, and so are its gradients
    frames, mask = batches[0]
    params = list(model.parameters())
    full = model(frames, mask)[1]
    halves = [model(frames[i:i + 2], mask[i:i + 2])[1] for i in (0, 2)]
    torch.testing.assert_close(full, (halves[0] + halves[1]) / 2, rtol=1e-13, atol=0)
    half_grads = [torch.autograd.grad(loss, params) for loss in halves]
    for p, g, g0, g1 in zip(params, torch.autograd.grad(full, params), *half_grads):
        torch.testing.assert_close(g, (g0 + g1) / 2, rtol=1e-11, atol=1e-14)

    inputs_path = tmp_path / "inputs.pt"
    torch.save({"configs": configs, "state_dict": model.state_dict(), "batches": batches, "lr": lr}, inputs_path)
    single = copy.deepcopy(model)
    want_losses = sgd_steps(single, batches, lr=lr)

    # the children find predkern and this module (which spawn re-imports to unpickle the worker)
    # through the sys.path handed to them, and through PYTHONPATH for anything they start
    sys_path = [ROOT, HERE] + [p for p in sys.path if p]
    env_path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([ROOT, HERE] + ([env_path] if env_path else [])))
    _run_spawned(_ddp_worker, (DDP_WORLD, str(tmp_path / "rendezvous"), str(inputs_path), str(tmp_path), sys_path),
                 DDP_WORLD, DDP_TIMEOUT_S)

    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(DDP_WORLD)]
    assert all(r["backend"] == "cpu" for r in results), [r["backend"] for r in results]  # the fused ops ran
    assert all(r["predkern_file"] == predkern.__file__ for r in results), [r["predkern_file"] for r in results]
    for name, p in single.named_parameters():
        # every rank holds the same parameters, bit for bit (one allreduce result for all)
        assert torch.equal(results[0]["params"][name], results[1]["params"][name]), name
        torch.testing.assert_close(results[0]["params"][name], p.detach(), rtol=1e-12, atol=1e-14, msg=name)
        assert not torch.equal(p.detach(), model.state_dict()[name]), f"{name} did not train"
    # each step's full-batch loss is the mean of the two ranks' losses
    rank_mean = (results[0]["losses"] + results[1]["losses"]) / 2
    torch.testing.assert_close(rank_mean, torch.stack(want_losses), rtol=1e-13, atol=0)


# -- 2. torch.save / torch.load ------------------------------------------------------------------

def _prednet():
    return pknn.PredNet(stack_sizes=(2, 4), R_stack_sizes=(2, 4), A_filt_sizes=(3,), Ahat_filt_sizes=(3, 3),
                        R_filt_sizes=(3, 3), output_mode="all")


class Zoo(nn.Module):
    """A user's model holding predkern models and cells side by side."""

    def __init__(self):
        super().__init__()
        configs = thuml_configs()
        self.predrnn = pknn.PredRNNv2(2, [4, 4], configs)
        self.convlstm = pknn.ConvLSTM(2, [4, 6], configs)
        self.prednet = _prednet()
        self.cells = nn.ModuleDict({
            "stlstm": pknn.SpatioTemporalLSTMCell(3, 4, 4, 4, 3, 1, False),
            "stlstm_v2": pknn.SpatioTemporalLSTMCellv2(3, 4, 4, 4, 3, 1, True),
            "convlstm": pknn.ConvLSTMCell(3, 4, 4, 4, 3, 1, False),
            "ndrplz": pknn.ConvLSTMCellNdrplz(3, 4, (3, 3), True),
        })

    def forward(self, frames, mask, prednet_frames, x, h, c, m):
        """Everything each part returns, and the gradients of a loss over all of it."""
        outs = {}
        outs["predrnn"] = self.predrnn(frames, mask)
        outs["convlstm"] = self.convlstm(frames, mask)
        outs["prednet"] = self.prednet(prednet_frames)
        for name in ("stlstm", "stlstm_v2"):
            outs[name] = self.cells[name](x, h, c, m)
        outs["convlstm_cell"] = self.cells["convlstm"](x, h, c)
        outs["ndrplz"] = self.cells["ndrplz"](x, (h, c))
        return outs


def _zoo_inputs():
    gen = torch.Generator().manual_seed(3)
    frames, mask = thuml_batch(dtype=torch.float32, seed=4)
    prednet_frames = torch.rand(2, 3, 2, 8, 8, generator=gen)
    x, h, c, m = (torch.randn(2, k, 4, 4, generator=gen) for k in (3, 4, 4, 4))
    return frames, mask, prednet_frames, x, h, c, m


def _zoo_run(model, inputs):
    """Flat list of every output, then of every parameter's gradient (of their summed means)."""
    model.zero_grad()
    outs = [t for value in model(*inputs).values() for t in (value if isinstance(value, tuple) else (value,))]
    sum(t.float().mean() for t in outs).backward()
    unused = {name for name, p in model.named_parameters() if p.grad is None}
    # OpenSTL's ConvLSTM cell creates conv_o and conv_last and never uses them
    assert all(re.search(r"(^|\.)(cell_list\.\d+|cells\.convlstm)\.conv_(o\.0|last)\.weight$", n) and "predrnn" not in n
               for n in unused), sorted(unused)
    return [t.detach() for t in outs] + [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _assert_bitwise(got, want):
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        assert a.dtype == b.dtype and a.shape == b.shape, i
        assert torch.equal(a, b), f"tensor {i} differs: max |diff| {(a.double() - b.double()).abs().max().item()}"


def test_save_load_whole_module_and_state_dict(tmp_path):
    torch.manual_seed(0)
    model = Zoo()
    inputs = _zoo_inputs()
    want = _zoo_run(model, inputs)
    assert all(torch.isfinite(t).all() for t in want)
    _assert_bitwise(_zoo_run(model, inputs), want)  # deterministic to begin with

    torch.save(model, tmp_path / "model.pt")
    loaded = torch.load(tmp_path / "model.pt", weights_only=False)
    assert type(loaded.predrnn) is pknn.PredRNNv2 and type(loaded.prednet) is pknn.PredNet
    _assert_bitwise(_zoo_run(loaded, inputs), want)

    torch.save(model.state_dict(), tmp_path / "state.pt")
    torch.manual_seed(1)  # other initial weights, replaced by the loaded ones
    fresh = Zoo()
    assert not torch.equal(fresh.predrnn.adapter.weight, model.predrnn.adapter.weight)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True), strict=True)
    assert list(fresh.state_dict()) == list(model.state_dict())
    _assert_bitwise(_zoo_run(fresh, inputs), want)


# -- 3. patched models: .to(dtype), copies that own their modules --------------------------------

def test_patched_model_to_float64_matches_unpatched_float64():
    """tests/test_patch.py covers torch.save/load and deepcopy of a patched model; this covers
    `.to(torch.float64)` after patching: the fused forward keeps running, on the converted
    parameters, equal to the unpatched model converted the same way (outputs, loss, gradients)."""
    torch.manual_seed(0)
    for layer_norm in (0, 1):
        configs = thuml_configs(layer_norm=layer_norm)
        plain = PeerRecurrentModel("predrnn_v2", [4, 4], configs)
        patched = copy.deepcopy(plain)
        assert set(predkern.patch(patched)) == {"cell_list.0", "cell_list.1", ""}
        patched.to(torch.float64)
        plain.to(torch.float64)
        assert "forward" in patched.__dict__ and "forward" in patched.cell_list[0].__dict__
        assert all(p.dtype == torch.float64 for p in patched.parameters())
        frames, mask = thuml_batch()
        mask = pknn.expand_mask(mask, 4, 4, 4)
        outs = []
        for model in (plain, patched):
            model.zero_grad()
            with default_dtype(torch.float64):  # the plain model's zero states
                next_frames, loss = model(frames, mask)
            loss.backward()
            outs.append((next_frames, loss, [p.grad for p in model.parameters()]))
        (want_frames, want_loss, want_grads), (got_frames, got_loss, got_grads) = outs
        assert got_frames.dtype == got_loss.dtype == torch.float64
        torch.testing.assert_close(got_frames, want_frames, rtol=1e-11, atol=1e-13)
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-11, atol=0)
        for (name, _), a, b in zip(plain.named_parameters(), want_grads, got_grads):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)
        assert predkern.patch(patched) == {}  # still patched: nothing left to do


@pytest.mark.parametrize("how", ["deepcopy", "save_load"])
def test_copy_of_patched_model_runs_on_its_own_weights(how, tmp_path):
    """A copy of a patched PredRNN-V2 model must run its fused forward on the copy's submodules,
    not on the original's: change the copy's weights (and its dtype), and only the copy changes."""
    torch.manual_seed(0)
    model = PeerRecurrentModel("predrnn_v2", [4, 4], thuml_configs())
    predkern.patch(model)
    frames, mask = thuml_batch(dtype=torch.float32)
    mask = pknn.expand_mask(mask, 4, 4, 4)
    want = model(frames, mask)[1].detach()
    if how == "deepcopy":
        clone = copy.deepcopy(model)
    else:
        torch.save(model, tmp_path / "patched.pt")
        clone = torch.load(tmp_path / "patched.pt", weights_only=False)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(0.5)
    clone.to(torch.float64)
    assert "forward" in clone.__dict__ and "forward" in clone.cell_list[1].__dict__  # still patched
    got = clone(frames.double(), mask.double())[1]
    assert got.dtype == torch.float64
    unpatched = copy.deepcopy(clone)
    predkern.unpatch(unpatched)
    with default_dtype(torch.float64):  # the unpatched model's zero states
        torch.testing.assert_close(got, unpatched(frames.double(), mask.double())[1], rtol=1e-11, atol=0)
    assert not torch.isclose(got.float(), want, rtol=1e-3).item()
    assert torch.equal(model(frames, mask)[1].detach(), want)  # the original is untouched


# -- 4. autocast ---------------------------------------------------------------------------------

def _autocast_step(model, frames, mask, autocast, record=None, dtype=torch.bfloat16):
    """Forward and backward; returns next_frames, the loss and all gradients as one vector (both
    float64). `record` gets, per cell call, the dtypes of (c, m) in, (h, c, m) out and the deltas."""
    model.zero_grad()
    hooks = []
    if record is not None:
        def hook(name, module, args, output):
            _, _, c, m = args
            record.append((name, [t.dtype for t in (c, m)], [t.dtype for t in output[:3]],
                           [t.dtype for t in output[3:]]))
        hooks = [cell.register_forward_hook(functools.partial(hook, f"cell_list.{i}"))
                 for i, cell in enumerate(model.cell_list)]
    try:
        with torch.autocast(frames.device.type, dtype=dtype, enabled=autocast):
            next_frames, loss = model(frames, mask)
        assert torch.isfinite(loss)
        loss.backward()
    finally:
        for h in hooks:
            h.remove()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and g.dtype == p.dtype and torch.isfinite(g).all()
               for g, p in zip(grads, model.parameters()))
    return next_frames, loss.detach().double(), torch.cat([g.double().flatten() for g in grads])


AUTOCAST = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"), pytest.param("cpu", torch.float16, id="cpu-fp16")] + [
    pytest.param(backend, dtype, id=f"{backend}-{str(dtype)[6:]}", marks=pytest.mark.gpu)
    for backend in ("cuda", "triton") for dtype in (torch.bfloat16, torch.float16)]


def _layer_norm_in_float32(self, x):
    """nn.LayerNorm.forward as CUDA autocast runs it: in float32, whatever the input."""
    with torch.autocast(x.device.type, enabled=False):
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


def _autocast_layer_norm_dtype(device, dtype):
    """The dtype a LayerNorm gives under autocast on this device (float32 on CUDA)."""
    ln = nn.LayerNorm(4).to(device)
    with torch.autocast(torch.device(device).type, dtype=dtype):
        return ln(torch.randn(2, 4, device=device, dtype=dtype)).dtype


@pytest.mark.parametrize("backend,dtype", AUTOCAST)
@pytest.mark.parametrize("layer_norm", [0, 1, 2], ids=["plain", "layer_norm", "layer_norm_fp32"])
def test_predrnn_v2_autocast_training_step(layer_norm, backend, dtype, monkeypatch):
    """Under bf16 / fp16 autocast the convs give half gates, the cell states c and m stay float32
    and h takes the gates' dtype (SPEC.md section 5); the fused model's loss and gradients are no
    further from the float64 model than plain PyTorch (predkern's reference backend) under the
    same autocast: |fused - ref64| <= 2 |plain - ref64| + atol. With layer_norm the gates have
    LayerNorm's dtype: half on a CPU, float32 on CUDA, where conv_last alone stays half
    (`layer_norm_fp32` makes a CPU's LayerNorm run as CUDA's does)."""
    device = backend_device(backend)
    if backends.unavailable_reason(backend, device):
        pytest.skip(backends.unavailable_reason(backend, device))
    if layer_norm == 2:
        if device != "cpu":
            pytest.skip("CUDA's own LayerNorm already runs in float32 (the layer_norm case)")
        monkeypatch.setattr(nn.LayerNorm, "forward", _layer_norm_in_float32)
    gates = _autocast_layer_norm_dtype(device, dtype) if layer_norm else dtype
    layer_norm = min(layer_norm, 1)
    torch.manual_seed(0)
    model = pknn.PredRNNv2(2, [4, 4], thuml_configs(layer_norm=layer_norm)).to(device)
    frames, mask = (t.to(device) for t in thuml_batch(dtype=torch.float32, seed=5))

    _, ref_loss, ref_grads = _autocast_step(copy.deepcopy(model).double(), frames.double(), mask.double(), False)
    record = []
    with backends.use(backend):
        next_frames, fused_loss, fused_grads = _autocast_step(model, frames, mask, True, record, dtype)
    with backends.use("reference"):
        _, plain_loss, plain_grads = _autocast_step(model, frames, mask, True, dtype=dtype)

    assert next_frames.dtype == dtype  # conv_last ran in the autocast dtype
    assert len(record) == 2 * 4  # two layers, total_length - 1 steps
    for name, states_in, (h, c, m), deltas in record:
        assert states_in == [torch.float32, torch.float32], (name, states_in)
        assert (h, c, m) == (gates, torch.float32, torch.float32), name
        assert deltas == [gates, gates], name
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # the loss is ~0.37, where a bf16 ulp is 2**-9 ~ 2e-3: atol is a quarter of one
    fused_err, plain_err = (fused_loss - ref_loss).abs().item(), (plain_loss - ref_loss).abs().item()
    assert fused_err <= 2 * plain_err + 5e-4, (fused_err, plain_err)
    # the gradients, judged as one vector (per element, bf16 noise on tiny entries would decide)
    fused_err = (fused_grads - ref_grads).norm().item()
    plain_err = (plain_grads - ref_grads).norm().item()
    assert fused_err <= 2 * plain_err + 1e-3 * ref_grads.norm().item(), (fused_err, plain_err)


# -- 5. torch.compile(fullgraph=True, dynamic=True) ---------------------------------------------

class EveryOp(nn.Module):
    """PredRNN-V2 (stlstm_memory, stlstm_output, decoupling_loss), ConvLSTM (convlstm_gates) and
    PredNet (convlstm_gates, prednet_error): one training loss over all three."""

    def __init__(self):
        super().__init__()
        self.predrnn = pknn.PredRNNv2(2, [4, 4], thuml_configs())
        self.convlstm = pknn.ConvLSTM(2, [4, 4], thuml_configs())
        self.prednet = pknn.PredNet(stack_sizes=(2, 4), R_stack_sizes=(2, 4), A_filt_sizes=(3,),
                                    Ahat_filt_sizes=(3, 3), R_filt_sizes=(3, 3), output_mode="error")

    def forward(self, frames, mask, prednet_frames):
        _, loss_v2 = self.predrnn(frames, mask)
        _, loss_convlstm = self.convlstm(frames, mask)
        return loss_v2 + loss_convlstm + pknn.prednet_loss(self.prednet(prednet_frames), "L_0")


def _every_op_batch(B, seed):
    frames, mask = thuml_batch(B=B, dtype=torch.float32, seed=seed)
    return frames, mask, torch.rand(B, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("compiler,backend", [
    ("aot_eager", "cpu"), pytest.param("inductor", "cpu", marks=pytest.mark.slow)] + [
    pytest.param(compiler, backend, marks=[pytest.mark.gpu] + ([pytest.mark.slow] if compiler == "inductor" else []))
    for compiler in ("aot_eager", "inductor") for backend in ("cuda", "triton")])
def test_compile_dynamic_no_recompile_across_steps_and_batch_sizes(compiler, backend):
    """One graph for every step and batch size under dynamic=True, no graph break, and the
    compiled loss and gradients equal eager's. The first batch size is unlike every other dim:
    dynamo gives equal sizes one symbol when it first traces (duck sizing), and a batch of 2 with
    PredNet's 2 channels would then be specialized along with them."""
    device = backend_device(backend)
    if backends.unavailable_reason(backend, device):
        pytest.skip(backends.unavailable_reason(backend, device))
    torch.manual_seed(0)
    model = EveryOp().to(device)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    compiled = torch.compile(model, fullgraph=True, dynamic=True, backend=compiler)
    with backends.use(backend):
        for step, B in enumerate([6, 7, 9, 3, 6]):
            batch = [t.to(device) for t in _every_op_batch(B, seed=step)]
            loss = compiled(*batch)
            grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
            assert counters["stats"]["unique_graphs"] == 1, (B, dict(counters["stats"]))
        loss_eager = model(*batch)
        grads_eager = torch.autograd.grad(loss_eager, list(model.parameters()), allow_unused=True)
    torch.testing.assert_close(loss, loss_eager, rtol=1e-5, atol=1e-6)
    for g, ge in zip(grads, grads_eager):  # OpenSTL's ConvLSTM cells never use conv_o, conv_last
        assert (g is None) == (ge is None)
        if g is not None:
            torch.testing.assert_close(g, ge, rtol=1e-4, atol=1e-6)


# -- 6. torch.jit.trace and torch.export --------------------------------------------------------

@pytest.mark.parametrize("how", ["jit.trace", "export"])
def test_traced_and_exported_models_replay_on_new_inputs(backend, how):
    """Traced (or exported) on one batch, run on another: the loss and every parameter's gradient
    equal eager's on that batch. The models' CPU channels-last path swaps the weights through
    torch.func.functional_call, which torch.jit.trace refuses: under tracing it is not taken."""
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and not RUN_SLOW:
        pytest.skip("36 s under the Triton interpreter (the ops' own trace and export tests run in CI): "
                    "run with PREDKERN_RUN_SLOW=1")
    torch.manual_seed(0)
    model = EveryOp().to(device, torch.float64)
    batch, other = ([t.to(device, torch.float64) for t in _every_op_batch(3, seed)] for seed in (0, 1))
    with backends.use(backend):
        want = model(*other)
        want_grads = torch.autograd.grad(want, list(model.parameters()), allow_unused=True)
        if how == "jit.trace":
            program, params = torch.jit.trace(model, tuple(batch), check_trace=False), list(model.parameters())
        else:
            program = torch.export.export(model, tuple(batch)).module()
            params = list(program.parameters())
        got = program(*other)
        grads = torch.autograd.grad(got, params, allow_unused=True)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for g, w in zip(grads, want_grads, strict=True):  # OpenSTL's ConvLSTM cells never use conv_o, conv_last
        assert (g is None) == (w is None)
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-14)


# -- 7. torch.onnx.export ------------------------------------------------------------------------

def _onnx_run(module, args, other, path):
    """Export `module` on `args` (torch.onnx.export's default exporter), run it in ONNX Runtime on
    `other`: its outputs as tensors."""
    import onnxruntime
    torch.onnx.export(module, tuple(args), str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: t.detach().cpu().numpy() for i, t in zip(session.get_inputs(), other, strict=True)}
    return [torch.from_numpy(a) for a in session.run(None, feeds)]


@pytest.mark.parametrize("op", ["convlstm_gates", "stlstm_memory", "stlstm_output", "decoupling_loss", "prednet_error"])
def test_onnx_export_of_each_op_runs_in_onnx_runtime(op, tmp_path):
    """ONNX has no predkern operators: under export every backend gives way to the reference, whose
    standard ops export. The exported op on new inputs gives the reference's outputs."""
    from op_table import OPS, inputs
    from test_transforms import OPTIONS
    names = [arg.name for arg in OPS[op]]

    class Op(nn.Module):
        def forward(self, *tensors):
            out = getattr(predkern, op)(**dict(zip(names, tensors)), **OPTIONS[op])
            return out if isinstance(out, tuple) else (out,)

    args, other = (tuple(inputs(op, C=3, spatial=(3, 5), seed=seed).values()) for seed in (0, 1))
    got = _onnx_run(Op(), args, other, tmp_path / f"{op}.onnx")  # the automatic choice: cpu
    with backends.use("reference"):
        want = Op()(*other)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)


def test_onnx_export_of_the_models_runs_in_onnx_runtime(tmp_path):
    torch.manual_seed(0)
    model = EveryOp().eval()
    batch, other = (_every_op_batch(3, seed) for seed in (0, 1))
    with backends.use("cpu"):  # asked for explicitly, and still exported
        (got,) = _onnx_run(model, batch, other, tmp_path / "models.onnx")
        with torch.no_grad():
            want = model(*other)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


# -- 8. the meta device --------------------------------------------------------------------------

def test_models_on_the_meta_device_give_shapes_and_flop_counts():
    """Built and run on the meta device (for shapes, or a FLOP count before allocating anything):
    no error and no fallback warning, and the same count of conv FLOPs as a run on real tensors."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = _every_op_batch(3, seed=0)
    counts = {}
    for device in ("meta", "cpu"):
        with torch.device(device):
            model = EveryOp()
        with warnings.catch_warnings(), FlopCounterMode(display=False) as flops:
            warnings.simplefilter("error")
            loss = model(*(t.to(device) for t in batch))
            loss.backward()
        assert loss.shape == () and loss.device.type == device
        # every parameter gets its gradient there, but OpenSTL's ConvLSTM cells' unused conv_o, conv_last
        assert all(p.grad is not None and p.grad.device.type == device for n, p in model.named_parameters()
                   if not re.search(r"^convlstm\.cell_list\.\d+\.conv_(o\.0|last)\.", n))
        counts[device] = flops.get_total_flops()
    assert counts["meta"] == counts["cpu"] > 0


# -- 9. activation checkpointing and saved-tensor offload ----------------------------------------

@pytest.mark.parametrize("how", ["checkpoint", "checkpoint_reentrant", "save_on_cpu"])
def test_checkpointed_and_offloaded_models_match_eager(backend, how):
    """torch.utils.checkpoint (both modes: the non-reentrant one re-runs the forward under
    saved-tensor hooks and checks that it saves the same tensors again) and save_on_cpu (the
    hooks move every saved tensor out and back): the loss and every parameter's gradient
    equal a plain run's, and so do the inputs'."""
    from torch.utils.checkpoint import checkpoint
    device = backend_device(backend)
    if backend == "triton" and device == "cpu" and not RUN_SLOW:
        pytest.skip("9 s a case under the Triton interpreter (two forwards and a backward of every model): "
                    "run with PREDKERN_RUN_SLOW=1")
    torch.manual_seed(0)
    model = EveryOp().to(device, torch.float64)
    # inputs with gradients: the reentrant checkpoint gives none where no input requires one
    batch = [t.to(device, torch.float64).requires_grad_() for t in _every_op_batch(3, seed=0)]
    params = list(model.parameters()) + batch
    with backends.use(backend):
        want = model(*batch)
        want_grads = torch.autograd.grad(want, params, allow_unused=True)
        if how == "save_on_cpu":
            with torch.autograd.graph.save_on_cpu(pin_memory=device == "cuda"):
                got = model(*batch)
        else:
            got = checkpoint(model, *batch, use_reentrant=how == "checkpoint_reentrant")
        for p in params:
            p.grad = None
        got.backward()  # the reentrant checkpoint refuses torch.autograd.grad
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    for p, w in zip(params, want_grads, strict=True):  # OpenSTL's ConvLSTM cells never use conv_o, conv_last
        assert (p.grad is None) == (w is None)
        if w is not None:
            torch.testing.assert_close(p.grad, w, rtol=1e-10, atol=1e-14)


# -- 10. forward-mode AD -------------------------------------------------------------------------

def test_jvp_of_the_models_matches_the_reference_backend(backend):
    """torch.func.jvp of the loss in the input frames: every op runs the reference under
    forward-mode AD (the fused kernels have no forward-mode formula), whatever backend was asked
    for, so the models' own code (their CPU channels-last path among it) runs under it too."""
    if backend == "reference":
        pytest.skip("the reference is the oracle here")
    device = backend_device(backend)
    torch.manual_seed(0)
    model = EveryOp().to(device, torch.float64)
    batch = [t.to(device, torch.float64) for t in _every_op_batch(3, seed=0)]
    tangents = [torch.randn_like(t) for t in batch]
    with backends.use("reference"):
        want = torch.func.jvp(model, tuple(batch), tuple(tangents))
    with backends.use(backend):
        got = torch.func.jvp(model, tuple(batch), tuple(tangents))
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
