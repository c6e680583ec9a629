"""Random test tensors in the layouts every op must handle (SPEC.md section 5)."""
import torch

LAYOUTS = ("contiguous", "channels_last", "strided")


def rand(shape, dtype=torch.float64, device="cpu", layout="contiguous", scale=1.5):
    """Random values in one of LAYOUTS: contiguous, channels_last (4-D/5-D), or strided, a view
    cut from a wider tensor (laid_out's "sliced")."""
    values = torch.randn(shape, dtype=torch.float64) * scale
    return laid_out(values, "sliced" if layout == "strided" else layout, dtype, device)


def expanded(shape, dtype=torch.float64, device="cpu", scale=1.5):
    """One sample for the whole batch, as an expanded (batch stride 0) view."""
    return rand((1, *shape[1:]), dtype, device, scale=scale).expand(shape)


def float64_copy(x):
    return {k: (v.detach().cpu().double() if isinstance(v, torch.Tensor) else v) for k, v in x.items()}


def max_error_over_scale(got, ref):
    if not ref.numel():
        return 0.0
    return (got.detach().double().cpu() - ref).abs().max().item() / max(1.0, ref.abs().max().item())


VIEWS = ("contiguous", "channels_last", "sliced", "expanded", "permuted")


def laid_out(values, view, dtype=torch.float32, device="cpu"):
    """`values` (float64, CPU) as `dtype` on `device` in the memory layout `view`: contiguous;
    channels_last (4-D/5-D, else contiguous); sliced (a channel slice when there are spatial dims, and every other element of
    the last dim of a wider tensor filled with NaN, so a read outside the view shows); expanded (values[0] broadcast over dim 0, stride 0);
    permuted (every dim stored in reverse order, a transposed view)."""
    v = values.to(device=device, dtype=dtype)
    if view == "channels_last" and v.dim() in (4, 5):
        return v.contiguous(memory_format=torch.channels_last if v.dim() == 4 else torch.channels_last_3d)
    if view == "sliced" and v.dim() >= 1:
        wide = list(v.shape)
        wide[-1] = 2 * wide[-1] + 1
        if v.dim() >= 3:
            wide[1] += 3
        w = torch.full(wide, float("nan"), dtype=dtype, device=device)
        inner = w.narrow(1, 2, v.shape[1]) if v.dim() >= 3 else w
        inner = inner[..., 1::2]
        inner.copy_(v)
        return inner
    if view == "expanded" and v.dim() >= 1 and v.shape[0] > 0:
        return v[:1].clone().expand(v.shape)
    if view == "permuted" and v.dim() >= 2:
        dims = tuple(range(v.dim() - 1, -1, -1))
        return v.permute(dims).contiguous().permute(dims)
    return v.contiguous()
