"""What PredRNN (v1, v2) and OpenSTL's ConvLSTM model share: the peers' `configs`, the stack of
cells over patch-space frames, the sampled input of each step and the MSE loss."""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from predkern.nn.stlstm_cell import autocast_conv_dtype, merged_weights_once


@dataclass(frozen=True)
class FrameConfig:
    """A peer's `configs`, read once: thuml/predrnn-pytorch's (img_width, img_channel,
    input_length, total_length) or OpenSTL's (in_shape, pre_seq_length, aft_seq_length)."""
    frame_channel: int   # channels of a patch-space frame: patch_size**2 * image channels
    height: int          # patch-space frame size the cells were built for
    width: int
    square_only: bool    # thuml's configs describe img_width x img_width frames only
    filter_size: int
    stride: int
    layer_norm: bool
    input_length: int
    total_length: int
    reverse_scheduled_sampling: bool
    decouple_beta: float

    @classmethod
    def read(cls, model_name: str, configs) -> "FrameConfig":
        if isinstance(configs, dict):
            configs = SimpleNamespace(**configs)
        get = lambda name, default=None: getattr(configs, name, default)  # noqa: E731
        p = get("patch_size", 1)
        try:
            if get("in_shape") is not None:  # OpenSTL
                _, channels, H, W = configs.in_shape
                input_length = configs.pre_seq_length
                total_length = get("total_length") or configs.pre_seq_length + configs.aft_seq_length
                square_only = False
            else:  # thuml
                channels, H = get("img_channel", 1), configs.img_width
                W = H
                input_length, total_length = configs.input_length, configs.total_length
                square_only = True
            filter_size, stride, layer_norm = configs.filter_size, configs.stride, bool(configs.layer_norm)
        except AttributeError as err:
            raise ValueError(f"{model_name}: `configs` lacks {err.name!r}; it needs thuml's (img_width, "
                             f"img_channel, patch_size, filter_size, stride, layer_norm, input_length, "
                             f"total_length) or OpenSTL's (in_shape, patch_size, filter_size, stride, "
                             f"layer_norm, pre_seq_length, aft_seq_length)") from None
        if H % p or W % p:
            raise ValueError(f"{model_name}: frame size {H}x{W} is not a multiple of patch_size={p}")
        if total_length < 2 or not 1 <= input_length < total_length:
            raise ValueError(f"{model_name}: need 1 <= input_length < total_length, got input_length="
                             f"{input_length}, total_length={total_length}")
        return cls(frame_channel=p * p * channels, height=H // p, width=W // p, square_only=square_only,
                   filter_size=filter_size, stride=stride, layer_norm=layer_norm, input_length=input_length,
                   total_length=total_length,
                   reverse_scheduled_sampling=get("reverse_scheduled_sampling", 0) == 1,
                   decouple_beta=get("decouple_beta", 0.1))


def _channels_last_convs(device) -> bool:
    """Whether the recurrence runs channels-last: on a CPU with oneDNN, whose convs are faster
    there (Inductor picks the same for CPU convs; under torch.compile it is left to Inductor).
    Not under torch.jit.trace, which cannot trace the functional_call that swaps the weights."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return device.type == "cpu" and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def _zeros(B, C, H, W, like, layout):
    return torch.zeros(B, C, H, W, dtype=like.dtype, device=like.device).contiguous(memory_format=layout)


class RecurrentFramePredictor(nn.Module):
    """A stack of cells run over `total_length - 1` steps on patch-space frames
    (B, T, h, w, p*p*C), each step's input chosen between the true frame and the last prediction
    by the sampling mask, predictions read out by a 1x1 `conv_last`; returns (next_frames, loss)
    as the peers do. Subclasses say what a cell is and how the state flows through one step."""

    cell_class: type

    def __init__(self, num_layers: int, num_hidden, configs):
        super().__init__()
        name = type(self).__name__
        self.configs = configs
        self.frame = FrameConfig.read(name, configs)
        num_hidden = list(num_hidden)
        if len(num_hidden) != num_layers or num_layers < 1:
            raise ValueError(f"{name}: `num_hidden` must list one width per layer (num_layers={num_layers}), "
                             f"got {num_hidden}")
        self.num_layers, self.num_hidden = num_layers, num_hidden
        self.frame_channel = self.frame.frame_channel
        self.MSE_criterion = nn.MSELoss()
        f = self.frame
        self.cell_list = nn.ModuleList(
            self.cell_class(f.frame_channel if i == 0 else num_hidden[i - 1], num_hidden[i], f.height, f.width,
                            f.filter_size, f.stride, f.layer_norm)
            for i in range(num_layers))
        self.conv_last = nn.Conv2d(num_hidden[-1], f.frame_channel, kernel_size=1, stride=1, padding=0, bias=False)

    def forward(self, frames_tensor: Tensor, mask_true: Tensor, return_loss: bool = True, **kwargs):
        """frames_tensor (B, T, h, w, p*p*C) in patch space; mask_true either the peers'
        (B, steps, h, w, p*p*C) or compact (B, steps) (see predkern.nn.sampling). Returns
        (next_frames (B, T-1, h, w, p*p*C), loss) with loss = MSE (+ the subclass's extra terms),
        or None when return_loss=False (OpenSTL's keyword)."""
        channels_last = kwargs.pop("_channels_last", None)
        if channels_last is None and _channels_last_convs(frames_tensor.device):
            # the conv weights in channels-last once per sequence (differentiable copies), not
            # once per conv call as each conv would otherwise convert them; under autocast also in
            # its dtype: autocast caches its cast of a leaf weight, but would cast these copies
            # anew at every conv, each cast saved for the backward (40 MiB of PredRNN-V2's 124
            # at the bench's CPU train config)
            weights = {name: p.to(dtype=autocast_conv_dtype(p), memory_format=torch.channels_last)
                       if p.dim() == 4 else p for name, p in self.named_parameters()}
            return torch.func.functional_call(self, weights, (frames_tensor, mask_true),
                                              {"return_loss": return_loss, "_channels_last": True, **kwargs})
        layout = torch.channels_last if channels_last else torch.contiguous_format
        frames = self._frames(frames_tensor, layout)
        B, _, _, H, W = frames.shape
        self._check_mask(mask_true, B)
        if isinstance(mask_true, Tensor) and mask_true.dim() == 5:
            # the peers' (B, steps, h, w, c) -> (B, steps, c, h, w)
            mask_true = self._as_layout(mask_true.permute(0, 1, 4, 2, 3), layout)
        state = self.initial_state(B, H, W, frames, layout)
        next_frames = []
        x_gen = None
        with merged_weights_once(self.cell_list):  # ST-LSTM cells: one merged conv_o/conv_last weight per sequence
            for t in range(self.frame.total_length - 1):
                net = self._step_input(frames, mask_true, t, x_gen)
                h_top = self.step(net, state)
                x_gen = self.conv_last(h_top)
                next_frames.append(x_gen)
        # [length, batch, channel, height, width] -> [batch, length, height, width, channel]
        next_frames = torch.stack(next_frames, dim=0).permute(1, 0, 3, 4, 2).contiguous()
        if not return_loss:
            return next_frames, None
        return next_frames, self.MSE_criterion(next_frames, frames_tensor[:, 1:]) + self.extra_loss(state)

    def initial_state(self, B, H, W, like, layout) -> dict:
        zeros = [_zeros(B, c, H, W, like, layout) for c in self.num_hidden]
        # h None: a zero hidden state, whose conv predkern's cells skip (a patched peer model's
        # cells, which may run their own forward, get the zeros)
        h = [None if isinstance(cell, self.cell_class) else z for cell, z in zip(self.cell_list, zeros)]
        return {"h": h, "c": zeros}

    def step(self, net: Tensor, state: dict) -> Tensor:
        raise NotImplementedError

    def extra_loss(self, state: dict):
        return 0.0

    def _frames(self, frames_tensor, layout):
        name, f = type(self).__name__, self.frame
        if frames_tensor.dim() != 5:
            raise ValueError(f"{name}: `frames_tensor` must be (batch, length, height, width, channels) in "
                             f"patch space, got shape {list(frames_tensor.shape)}")
        B, T, H, W, C = frames_tensor.shape
        if C != f.frame_channel:
            raise ValueError(f"{name}: `frames_tensor` has {C} channels, expected patch_size**2 * img_channel = "
                             f"{f.frame_channel}")
        if T < f.total_length:
            raise ValueError(f"{name}: `frames_tensor` has {T} frames, expected total_length={f.total_length}")
        if f.layer_norm and (H, W) != (f.height, f.width):  # the LayerNorms are built for one frame size
            square = " (thuml's configs describe square img_width x img_width frames; OpenSTL's in_shape " \
                     "gives non-square ones)" if f.square_only else ""
            raise ValueError(f"{name}: `frames_tensor` frames are {H}x{W} patches, but layer_norm was built for "
                             f"{f.height}x{f.width}{square}")
        # [batch, length, height, width, channel] -> [batch, length, channel, height, width]
        return self._as_layout(frames_tensor.permute(0, 1, 4, 2, 3), layout)

    @staticmethod
    def _as_layout(seq, layout):
        """A (B, T, C, H, W) sequence whose steps seq[:, t] are in `layout`: the permuted
        (B, T, H, W, C) view already is channels-last; contiguous needs the peers' one copy (a
        view of mixed strides would hand them to every step's input, and on to every conv)."""
        return seq if layout == torch.channels_last else seq.contiguous()

    def _check_mask(self, mask_true, B):
        f = self.frame
        steps = f.total_length - 2 if f.reverse_scheduled_sampling else f.total_length - f.input_length - 1
        if steps == 0:
            return
        if not isinstance(mask_true, Tensor) or mask_true.dim() not in (2, 5) or mask_true.shape[0] != B \
                or mask_true.shape[1] < steps:
            shape = list(mask_true.shape) if isinstance(mask_true, Tensor) else type(mask_true).__name__
            raise ValueError(f"{type(self).__name__}: `mask_true` must be ({B}, >= {steps}) or ({B}, >= {steps}, "
                             f"height, width, channels), got {shape}")

    def _step_input(self, frames, mask_true, t, x_gen):
        f = self.frame
        if f.reverse_scheduled_sampling:
            if t == 0:
                return frames[:, t]
            j = t - 1
        else:
            if t < f.input_length:
                return frames[:, t]
            j = t - f.input_length
        mask = mask_true[:, j]
        if mask.dim() == 1:  # compact (B, steps) mask
            mask = mask.view(-1, 1, 1, 1)
        return mask * frames[:, t] + (1 - mask) * x_gen
