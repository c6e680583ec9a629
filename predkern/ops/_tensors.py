"""Output allocation and kernel views shared by the ops (the Python twins of csrc/common.*)."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from predkern.reference import memory_format


def empty(shape, like: Tensor, dtype: torch.dtype) -> Tensor:
    """An output that follows `like`'s memory format, as the C++ kernels allocate theirs."""
    return torch.empty(shape, dtype=dtype, device=like.device, memory_format=memory_format(like))


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in (and save pre-activations in): float64 or float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def with_channels(t: Tensor, channels) -> tuple:
    """t.shape with dim 1 set to `channels`."""
    return (t.shape[0], channels, *t.shape[2:])


def as3(t: Optional[Tensor]) -> Optional[Tensor]:
    """(B, k*C, *spatial) as (B, k*C, S): a view whenever the spatial dims flatten, else a copy."""
    return None if t is None else t.reshape(t.shape[0], t.shape[1], math.prod(t.shape[2:]))
