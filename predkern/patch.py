"""Swap the forward of the peers' cells (and of whole PredRNN-V2 models) inside a live model for
predkern's fused one, the weights untouched.

Cells are recognized by structure — submodule names, conv shapes and the gate layout — not by
their class, and every candidate is then checked by a probe: a float64 copy of the module runs
its own forward and the fused one on random inputs, and the module is patched only if the two
agree. So a cell that looks right but computes something else (another forget bias, an extra
term) keeps its own forward, with a warning. The parameters stay the very same objects: an
optimizer built before patching keeps working, state_dict keys do not change.
"""
from __future__ import annotations

import copy
import functools
import re
import warnings

import torch
from torch import nn

from predkern.nn._recurrent import FrameConfig
from predkern.nn.convlstm_cell import ConvLSTMCell, ConvLSTMCellNdrplz
from predkern.nn.predrnn import PredRNNv2
from predkern.nn.stlstm_cell import fused_stlstm_step

_MARK = "_predkern_patch"
_LOOKS_RECURRENT = re.compile(r"lstm|cell|predrnn|rnn", re.IGNORECASE)
_PROBE_TOL = 1e-9  # float64 probe: the fused and the original forward differ only in rounding


def _stlstm_forward(self, x_t, h_t, c_t, m_t):
    return fused_stlstm_step(self, x_t, h_t, c_t, m_t, deltas=False)


def _stlstm_v2_forward(self, x_t, h_t, c_t, m_t):
    return fused_stlstm_step(self, x_t, h_t, c_t, m_t, deltas=True)


def patch(model: nn.Module, *, verbose: bool = True) -> dict[str, str]:
    """Patch every recognized cell and PredRNN-V2 model inside `model` (itself included).

    Recognized: thuml / OpenSTL SpatioTemporalLSTMCell (v1, and v2 returning the deltas),
    OpenSTL ConvLSTMCell, ndrplz ConvLSTMCell, and thuml / OpenSTL PredRNN-V2 models (whose
    decoupling loss then runs stacked, as one fused call). Returns {module name: what it was
    patched as}; warns (when `verbose`) about modules that look recurrent but were not patched,
    and why. Undo with `unpatch`.
    """
    patched, skipped = {}, {}
    modules = list(model.named_modules())
    for name, module in modules:  # cells first: a patched model's forward calls its cells
        if _MARK in module.__dict__:
            continue
        kind, reason = _patch_cell(module)
        if kind:
            patched[name] = kind
        elif reason:
            skipped[name] = reason
    for name, module in modules:
        if _MARK in module.__dict__ or name in skipped:
            continue
        kind, reason = _patch_predrnn_v2(module)
        if kind:
            patched[name] = kind
        elif reason:
            skipped[name] = reason
    if verbose:
        for name, module in modules:
            if name in patched or _MARK in module.__dict__:
                continue
            reason = skipped.get(name)
            if reason is None and _LOOKS_RECURRENT.search(type(module).__name__) and \
                    not any(child in patched for child in _children(name, modules)):
                reason = "its structure matches none of the cells predkern knows"
            if reason:
                warnings.warn(f"predkern.patch: left {name or 'the model'} ({type(module).__name__}) "
                              f"unpatched: {reason}", stacklevel=2)
    return patched


def unpatch(model: nn.Module) -> list[str]:
    """Give every module patched by `patch` its own forward back; returns their names."""
    restored = []
    for name, module in model.named_modules():
        if _MARK in module.__dict__:
            del module.__dict__[_MARK]
            del module.__dict__["forward"]
            restored.append(name)
    return restored


def _children(name, modules):
    prefix = f"{name}." if name else ""
    return [n for n, _ in modules if n.startswith(prefix) and n != name]


def _bind(module, forward, kind, **extra):
    # a partial of a module-level function, not a bound method: it pickles and deep-copies
    module.__dict__["forward"] = functools.partial(forward, module)
    module.__dict__[_MARK] = {"kind": kind, **extra}


# -- cells ---------------------------------------------------------------------------------------

def _plain_conv(conv, cin=None, cout=None, square_same=True):
    """A bias-free, stride-1, same-size 2-D conv of the given channel counts (None: any)."""
    if not isinstance(conv, nn.Conv2d) or conv.bias is not None or conv.groups != 1:
        return False
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        return False
    k = conv.kernel_size
    if square_same and (k[0] != k[1] or k[0] % 2 == 0 or conv.padding != (k[0] // 2, k[1] // 2)):
        return False
    return (cin is None or conv.in_channels == cin) and (cout is None or conv.out_channels == cout)


def _seq_conv(module, name):
    """The peers' nn.Sequential(conv[, LayerNorm]) -> (conv, LayerNorm or None), else (None, None)."""
    seq = module._modules.get(name)
    if not isinstance(seq, nn.Sequential) or not 1 <= len(seq) <= 2 or not isinstance(seq[0], nn.Conv2d):
        return None, None
    if len(seq) == 2 and not isinstance(seq[1], nn.LayerNorm):
        return None, None
    return seq[0], (seq[1] if len(seq) == 2 else None)


def _stlstm_layout(module):
    """(in_channel, C, frame size) of a peer ST-LSTM cell, or None."""
    (cx, nx), (ch, nh), (cm, nm), (co, no) = (_seq_conv(module, n) for n in ("conv_x", "conv_h", "conv_m", "conv_o"))
    last = module._modules.get("conv_last")
    if None in (cx, ch, cm, co):
        return None
    C = ch.in_channels
    if not (_plain_conv(cx, None, 7 * C) and _plain_conv(ch, C, 4 * C) and _plain_conv(cm, C, 3 * C)
            and _plain_conv(co, 2 * C, C) and _plain_conv(last, 2 * C, C) and last.kernel_size == (1, 1)):
        return None
    return cx.in_channels, C, _frame_size(nx, nh, nm, no)


def _openstl_convlstm_layout(module):
    (cx, nx), (ch, nh) = _seq_conv(module, "conv_x"), _seq_conv(module, "conv_h")
    if cx is None or ch is None or "conv_m" in module._modules:
        return None
    C = ch.in_channels
    if not (_plain_conv(cx, None, 4 * C) and _plain_conv(ch, C, 4 * C)):
        return None
    return cx.in_channels, C, _frame_size(nx, nh)


def _ndrplz_layout(module):
    conv, C = module._modules.get("conv"), getattr(module, "hidden_dim", None)
    if not isinstance(conv, nn.Conv2d) or not isinstance(C, int) or conv.out_channels != 4 * C \
            or conv.in_channels <= C or conv.groups != 1 or len(module._modules) != 1:
        return None
    return conv.in_channels - C, C, (5, 6)


def _frame_size(*norms):
    shapes = {tuple(n.normalized_shape[-2:]) for n in norms if n is not None}
    return shapes.pop() if len(shapes) == 1 else (5, 6) if not shapes else "mixed"


def _patch_cell(module):
    """(kind, None) when patched, (None, reason) when a candidate failed, (None, None) otherwise."""
    for layout, kinds in ((_stlstm_layout, {3: ("stlstm", _stlstm_forward), 5: ("stlstm_v2", _stlstm_v2_forward)}),
                          (_openstl_convlstm_layout, {2: ("openstl_convlstm", ConvLSTMCell.forward)}),
                          (_ndrplz_layout, {2: ("ndrplz_convlstm", ConvLSTMCellNdrplz.forward)})):
        found = layout(module)
        if found is None:
            continue
        cin, C, size = found
        if size == "mixed":
            return None, "its LayerNorms are built for different frame sizes"
        ndrplz = layout is _ndrplz_layout
        states = 2 if ndrplz else 2 if layout is _openstl_convlstm_layout else 3
        return _probe_and_bind(module, cin, C, size, states, ndrplz, kinds)
    return None, None


def _probe_and_bind(module, cin, C, size, states, ndrplz, kinds):
    try:
        ref, device = _float64_copy(module)
    except RuntimeError as err:
        return None, f"its float64 probe copy failed ({err})"
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64).to(device)  # noqa: E731
    x = rand(2, cin, *size)
    state = [rand(2, C, *size) for _ in range(states)]
    args = (x, (state[0], state[1])) if ndrplz else (x, *state)
    with torch.no_grad():
        try:
            want = type(module).forward(ref, *args)
        except Exception as err:  # noqa: BLE001 - any failure means: not the cell we know
            return None, f"its own forward failed on a probe ({type(err).__name__}: {err})"
        if not isinstance(want, tuple) or len(want) not in kinds:
            return None, "its forward returns other outputs than the peers' cells"
        kind, forward = kinds[len(want)]
        got = forward(ref, *args)
    mismatch = _mismatch(want, got)
    if mismatch:
        return None, f"the fused forward differs from its own on a probe ({mismatch})"
    _bind(module, forward, kind)
    return kind, None


def _float64_copy(module):
    params = list(module.parameters())
    device = params[0].device if params else torch.device("cpu")
    if device.type == "meta":
        raise RuntimeError("its parameters are on the meta device")
    ref = copy.deepcopy(module).double()
    for sub in ref.modules():  # a copy of a patched submodule runs its original forward
        sub.__dict__.pop(_MARK, None)
        sub.__dict__.pop("forward", None)
    return ref, device


def _mismatch(want, got):
    if len(want) != len(got):
        return f"{len(got)} outputs instead of {len(want)}"
    for i, (a, b) in enumerate(zip(want, got)):
        if a is None or b is None:
            if a is not b:
                return f"output {i} is None on one side"
            continue
        if a.shape != b.shape:
            return f"output {i} has shape {list(b.shape)} instead of {list(a.shape)}"
        scale = max(1.0, a.abs().max().item()) if a.numel() else 1.0
        err = (a - b).abs().max().item() / scale if a.numel() else 0.0
        if not err <= _PROBE_TOL:
            return f"output {i} is off by {err:.3g}"
    return None


# -- whole PredRNN-V2 models -----------------------------------------------------------------------

def _patch_predrnn_v2(model):
    """thuml's / OpenSTL's PredRNN-V2 model: cell_list of v2 cells, conv_last, a 1x1 adapter,
    configs. Its forward is swapped for PredRNNv2's, on the same submodules."""
    cells, adapter = model._modules.get("cell_list"), model._modules.get("adapter")
    if not isinstance(cells, nn.ModuleList) or not isinstance(adapter, nn.Conv2d) or not hasattr(model, "configs"):
        return None, None
    if not len(cells) or not all(getattr(c, "__dict__", {}).get(_MARK, {}).get("kind") == "stlstm_v2" for c in cells):
        return None, "not all of its cells were patched as PredRNN-V2 cells"
    if getattr(model, "visual", 0):
        return None, "its delta visualization (configs.visual) is on"
    try:
        fused = _predrnn_v2_on(model, model.configs)
    except ValueError as err:
        return None, str(err)
    reason = _probe_model(model)
    if reason:
        return None, reason
    _bind(model, _predrnn_v2_model_forward, "predrnn_v2_model", fused=fused)
    return "predrnn_v2_model", None


def _predrnn_v2_model_forward(self, frames_tensor, mask_true, *args, **kwargs):
    return self.__dict__[_MARK]["fused"](frames_tensor, mask_true, *args, **kwargs)


def _predrnn_v2_on(model, configs):
    """A PredRNNv2 that runs on `model`'s own submodules (not registered in `model`, so its
    state_dict is untouched)."""
    fused = PredRNNv2.__new__(PredRNNv2)
    nn.Module.__init__(fused)
    fused.configs, fused.frame = configs, FrameConfig.read("patched PredRNN-V2", configs)
    fused.num_hidden = [cell.conv_h[0].in_channels for cell in model.cell_list]
    fused.num_layers, fused.frame_channel = len(fused.num_hidden), fused.frame.frame_channel
    if len(set(fused.num_hidden)) != 1 or model.adapter.in_channels != fused.num_hidden[0]:
        raise ValueError("its layers or adapter differ in width")
    fused.cell_list, fused.conv_last, fused.adapter = model.cell_list, model.conv_last, model.adapter
    fused.MSE_criterion = nn.MSELoss()
    return fused


def _probe_model(model):
    """Run a float64 copy, shortened to 3 frames, through its own forward and the fused one."""
    try:
        ref, device = _float64_copy(model)
    except RuntimeError as err:
        return f"its float64 probe copy failed ({err})"
    configs = copy.copy(model.configs)
    for name, value in (("input_length", 1), ("pre_seq_length", 1), ("aft_seq_length", 2), ("total_length", 3)):
        if hasattr(configs, name):
            setattr(configs, name, value)
    ref.configs = configs
    try:
        fused = _predrnn_v2_on(ref, configs)
    except ValueError as err:
        return str(err)
    f = fused.frame
    gen = torch.Generator().manual_seed(0)
    frames = torch.rand(2, 3, f.height, f.width, f.frame_channel, generator=gen, dtype=torch.float64).to(device)
    mask = (torch.rand(2, 1, f.height, f.width, f.frame_channel, generator=gen) < 0.5).double().to(device)
    # the peers make their zero states with a bare torch.zeros, in the default dtype
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        with torch.no_grad():
            try:
                want = type(model).forward(ref, frames, mask)
            except Exception as err:  # noqa: BLE001
                return f"its own forward failed on a probe ({type(err).__name__}: {err})"
            got = fused(frames, mask)
    finally:
        torch.set_default_dtype(default_dtype)
    mismatch = _mismatch(tuple(want), tuple(got))
    return f"the fused forward differs from its own on a probe ({mismatch})" if mismatch else None
