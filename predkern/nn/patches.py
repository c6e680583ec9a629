"""PredRNN's patch space (thuml core/utils/preprocess.py), on torch tensors.

The models work on frames cut into p x p patches stacked along channels:
(B, T, H, W, C) <-> (B, T, H/p, W/p, p*p*C), the channel index being (row in patch, column in
patch, image channel).
"""
from __future__ import annotations

from torch import Tensor


def reshape_patch(frames: Tensor, patch_size: int) -> Tensor:
    """(B, T, H, W, C) frames -> (B, T, H/p, W/p, p*p*C) patches."""
    if frames.dim() != 5:
        raise ValueError(f"reshape_patch: `frames` must be (B, T, H, W, C), got shape {list(frames.shape)}")
    B, T, H, W, C = frames.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"reshape_patch: frame size {H}x{W} is not a multiple of patch_size={p}")
    a = frames.reshape(B, T, H // p, p, W // p, p, C).permute(0, 1, 2, 4, 3, 5, 6)
    return a.reshape(B, T, H // p, W // p, p * p * C)


def reshape_patch_back(patches: Tensor, patch_size: int) -> Tensor:
    """(B, T, H/p, W/p, p*p*C) patches -> (B, T, H, W, C) frames."""
    if patches.dim() != 5:
        raise ValueError(f"reshape_patch_back: `patches` must be (B, T, h, w, p*p*C), got shape "
                         f"{list(patches.shape)}")
    B, T, h, w, channels = patches.shape
    p = patch_size
    if channels % (p * p):
        raise ValueError(f"reshape_patch_back: {channels} channels is not a multiple of patch_size**2={p * p}")
    a = patches.reshape(B, T, h, w, p, p, channels // (p * p)).permute(0, 1, 2, 4, 3, 5, 6)
    return a.reshape(B, T, h * p, w * p, channels // (p * p))
