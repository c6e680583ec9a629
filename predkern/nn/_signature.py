"""The peers' two constructor signatures for the same cells (SPEC.md section 6)."""
from __future__ import annotations

import inspect


def _openstl(height, width, filter_size, stride, layer_norm):
    pass


def _thuml(width, filter_size, stride, layer_norm):
    pass


def frame_and_conv(cls_name: str, args: tuple, kwargs: dict) -> tuple[int, int, int, int, bool]:
    """(height, width, filter_size, stride, layer_norm) from either OpenSTL's
    ``(..., height, width, filter_size, stride, layer_norm)`` or thuml's square-frame
    ``(..., width, filter_size, stride, layer_norm)``."""
    for form in (_openstl, _thuml):
        try:
            bound = inspect.signature(form).bind(*args, **kwargs).arguments
        except TypeError:
            continue
        height = bound.get("height", bound["width"])
        return height, bound["width"], bound["filter_size"], bound["stride"], bool(bound["layer_norm"])
    raise TypeError(f"{cls_name}: expected (in_channel, num_hidden, height, width, filter_size, stride, "
                    f"layer_norm) as OpenSTL or (in_channel, num_hidden, width, filter_size, stride, layer_norm) "
                    f"as thuml/predrnn-pytorch, got in_channel, num_hidden, then {_given(args, kwargs)}")


def _given(args: tuple, kwargs: dict) -> str:
    """What followed (in_channel, num_hidden), for the error: `(4, 3, 1)` and `stride=1`."""
    parts = [f"{len(args)} positional argument{'s' * (len(args) != 1)} {args!r}" if args else "no positional arguments"]
    if kwargs:
        parts.append("keyword arguments " + ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items())))
    return " and ".join(parts)
