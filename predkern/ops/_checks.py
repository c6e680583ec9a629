"""Argument checks shared by the ops: each error names the argument, what was expected and what
was given (SPEC.md section 5). The C++ extension checks the same things for direct torch.ops calls."""
from __future__ import annotations

import numbers

import torch

FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(op: str, name: str, t, like: torch.Tensor | None = None) -> None:
    """`t` is a dense floating-point tensor on `like`'s device."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: `{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested:
        raise ValueError(f"{op}: `{name}` must be a strided (dense) tensor, got a nested tensor")
    if t.dtype not in FLOATING:
        raise TypeError(f"{op}: `{name}` must be a floating-point tensor "
                        f"(float16, bfloat16, float32 or float64), got dtype {t.dtype}")
    if t.layout != torch.strided:
        raise ValueError(f"{op}: `{name}` must be a strided (dense) tensor, got layout {t.layout}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{op}: `{name}` must be on the device of the other inputs "
                         f"({like.device}), got {t.device}")


def real(op: str, name: str, value, none_ok: bool = False) -> float | None:
    """A real number (Python's or NumPy's, not a bool) as the Python float the kernels take."""
    if type(value) is float:  # the common case, before the slower check against numbers.Real
        return value
    if value is None and none_ok:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{op}: `{name}` must be a float{' or None' if none_ok else ''}, got {type(value).__name__}")
    return float(value)


def shape(op: str, name: str, t: torch.Tensor, expected, what: str) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{op}: `{name}` must have shape {list(expected)} (as {what}), got {list(t.shape)}")


def dtype(op: str, name: str, t: torch.Tensor, expected: torch.dtype, what: str) -> None:
    if t.dtype != expected:
        raise ValueError(f"{op}: `{name}` must have the dtype of {what} ({expected}), got {t.dtype}")


def state_dtype(op: str, name: str, state: torch.Tensor, gates: torch.Tensor) -> None:
    """Cell state dtype: the gates' dtype, or float32 with float16/bfloat16 gates (autocast)."""
    autocast_mix = state.dtype == torch.float32 and gates.dtype in (torch.float16, torch.bfloat16)
    if state.dtype != gates.dtype and not autocast_mix:
        raise ValueError(f"{op}: `{name}` must have the dtype of the gates ({gates.dtype}), or "
                         f"float32 with float16/bfloat16 gates, got {state.dtype}")


def choice(op: str, name: str, value, allowed, hint: str = "") -> None:
    if value not in allowed:
        raise ValueError(f"{op}: `{name}` must be {hint or 'one of ' + repr(tuple(allowed))}, got {value!r}")


def stacked(op: str, name: str, t: torch.Tensor, k: int, blocks: str) -> int:
    """`t` is (B, k*C, *spatial); returns C."""
    if t.dim() < 2:
        raise ValueError(f"{op}: `{name}` must have shape (B, {k}*C, *spatial), got {t.dim()} dims {list(t.shape)}")
    if t.shape[1] % k:
        raise ValueError(f"{op}: `{name}`.size(1) must be a multiple of the {k} {blocks}, got {t.shape[1]}")
    return t.shape[1] // k
