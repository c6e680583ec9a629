"""Triton kernels for ``decoupling_loss`` (SPEC.md section 3): two launches forward, one backward.

The Triton twin of ``csrc/decoupling_loss.h``, with the conventions of ``convlstm_gates.py``
(helpers in ``_common.py``): delta_c = x and delta_m = y are 3-D strided views (N, C, S) read in
place through their own strides (0 for expanded views, 1 on channels for channels_last, anything
for slices); nothing is copied. Row r = n*C + c is the spatial vector x[n, c, :] (and y[n, c, :]).

Forward, two launches:
  1. one program per (n, channel tile) loops over S in chunks of BLOCK_S and accumulates
     sxx = sum x^2, syy = sum y^2, sxy = sum x y per row, always in float64 (so float32 rows of
     1e20 or 1e-20 neither overflow nor underflow), in a fixed order; ``_decoupling_row`` (a port
     of ``decoupling_row``: the same clamps, masks and NaN rules) turns them into |cos_r|, written
     to a float64 (N*C,) workspace, and, when the backward needs them, the row coefficients
     k[0..3] (mean 1/R folded in), written to ``row_coefs`` (N*C, 4).
  2. one program sums the workspace in row blocks (a vector accumulator, one tl.sum at the end)
     and writes sum / R, rounded once into the loss's dtype.
The tile is wide along whichever dim is contiguous in x (space for NCHW, channels for
channels_last), as ``_geometry`` decides, so both layouts read coalesced; the batch is never folded
(rows are per sample). No atomics: the same bits on every run.

Backward, one element-wise launch: grad_x = G (k0 x + k1 y), grad_y = G (k2 y + k3 x), G the
loss's gradient read in the kernel (no host sync), all in float64 (for float32 inputs near 1e20 the
coefficients are ~1e-45, which float32 would flush) and rounded once on store.

The launchers do no argument checking and no autograd: the caller (``predkern.ops.decoupling_loss``)
validates, allocates the outputs and wraps autograd.
"""
import torch
import triton
import triton.language as tl

from ._common import (_FP_FUSION, _INT32_MAX, _NUM_WARPS, _TILE, _geometry, _ld, _s3, _st64, _tile,
                      on_tensors_device)

__all__ = ["forward", "backward"]

_SUM_BLOCK = 1024  # rows per step of the one-program final sum


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _decoupling_row(sxx, syy, sxy, inv_rows, HAS_K: tl.constexpr):
    """decoupling_row of csrc/decoupling_loss.h on float64 vectors: |cos| and k[0..3] (zeros when
    not HAS_K). The comparisons are written as there, so NaN keeps its value; the bounds are
    float64 tensors (Triton 3.6 rounds a Python float compared with a tensor to float32)."""
    nx = tl.sqrt(sxx)
    ny = tl.sqrt(syy)
    eps = tl.full(nx.shape, 1e-12, tl.float64)
    eps_cos = tl.full(nx.shape, 1e-8, tl.float64)
    dx = tl.where(nx < eps, eps, nx)  # F.normalize's clamp_min
    dy = tl.where(ny < eps, eps, ny)
    na = nx / dx  # norms of the normalized rows
    nb = ny / dy
    ea = tl.where(na < eps_cos, eps_cos, na)  # cosine_similarity's clamp (under no_grad)
    eb = tl.where(nb < eps_cos, eps_cos, nb)
    cos = sxy / (dx * dy) / (ea * eb)
    if HAS_K:
        sign = tl.where(cos > 0.0, 1.0, tl.where(cos < 0.0, -1.0, cos * 0.0))  # NaN * 0 = NaN
        g = sign * inv_rows
        px = g / (ea * eb * dy)
        qx = tl.where(na != 0.0, -g * cos / (ea * na * dx), 0.0)
        py = g / (ea * eb * dx)
        qy = tl.where(nb != 0.0, -g * cos / (eb * nb * dy), 0.0)
        rx = tl.where(nx >= eps, (px * sxy + qx * sxx) / (dx * dx * nx), 0.0)
        ry = tl.where(ny >= eps, (py * sxy + qy * syy) / (dy * dy * ny), 0.0)
        k0 = qx / dx - rx
        k1 = px / dx
        k2 = qy / dy - ry
        k3 = py / dy
    else:
        k0 = cos * 0.0
        k1 = k0
        k2 = k0
        k3 = k0
    return tl.abs(cos), k0, k1, k2, k3


@triton.jit
def _decoupling_rows_kernel(
    x_ptr, y_ptr, abs_cos_ptr, k_ptr,
    C, S, n_ct,
    x_sb, x_sc, x_ss,
    y_sb, y_sc, y_ss,
    inv_rows: tl.float64,
    HAS_K: tl.constexpr, CH_FAST: tl.constexpr, LARGE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    # One program per (n, channel tile): _tile with a single space tile gives n = pid // n_ct.
    b, ch, s, C, _ = _tile(C, S, n_ct, 1, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    cmask = ch < C
    x_base = x_ptr + b * x_sb + ch * x_sc
    y_base = y_ptr + b * y_sb + ch * y_sc
    acc_xx = tl.zeros([BLOCK_C, BLOCK_S], tl.float64)
    acc_yy = tl.zeros([BLOCK_C, BLOCK_S], tl.float64)
    acc_xy = tl.zeros([BLOCK_C, BLOCK_S], tl.float64)
    for s0 in range(0, S, BLOCK_S):
        ss = s + s0
        m = cmask & (ss < S)
        x = _ld(x_base, ss * x_ss, m, tl.float64)
        y = _ld(y_base, ss * y_ss, m, tl.float64)
        acc_xx += x * x
        acc_yy += y * y
        acc_xy += x * y
    sxx = tl.sum(acc_xx, axis=1, keep_dims=True)  # (BLOCK_C, 1)
    syy = tl.sum(acc_yy, axis=1, keep_dims=True)
    sxy = tl.sum(acc_xy, axis=1, keep_dims=True)
    r = b * C + ch  # row index n*C + c, (BLOCK_C, 1)
    if HAS_K:
        # The sums sit in the loads' layout: with channels contiguous a thread holds up to 8
        # rows (one vector), and the coefficients' dozen float64 divisions per row would take
        # 255 registers and spill. The sums go out to the row's k slots and come back one row
        # per thread (a fresh 1-D layout); the barriers order the two trips within the block.
        tl.store(k_ptr + 4 * r, sxx, mask=cmask)
        tl.store(k_ptr + (4 * r + 1), syy, mask=cmask)
        tl.store(k_ptr + (4 * r + 2), sxy, mask=cmask)
        tl.debug_barrier()
        ch1 = (tl.program_id(0) % n_ct) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask1 = ch1 < C
        r1 = b * C + ch1
        sxx1 = tl.load(k_ptr + 4 * r1, mask=cmask1, other=0.0)
        syy1 = tl.load(k_ptr + (4 * r1 + 1), mask=cmask1, other=0.0)
        sxy1 = tl.load(k_ptr + (4 * r1 + 2), mask=cmask1, other=0.0)
        tl.debug_barrier()  # every copy of a row is read before any is overwritten
        abs_cos, k0, k1, k2, k3 = _decoupling_row(sxx1, syy1, sxy1, inv_rows, True)
        tl.store(abs_cos_ptr + r1, abs_cos, mask=cmask1)
        tl.store(k_ptr + 4 * r1, k0, mask=cmask1)
        tl.store(k_ptr + (4 * r1 + 1), k1, mask=cmask1)
        tl.store(k_ptr + (4 * r1 + 2), k2, mask=cmask1)
        tl.store(k_ptr + (4 * r1 + 3), k3, mask=cmask1)
    else:
        abs_cos, _, _, _, _ = _decoupling_row(sxx, syy, sxy, inv_rows, False)
        tl.store(abs_cos_ptr + r, abs_cos, mask=cmask)


@triton.jit
def _decoupling_mean_kernel(abs_cos_ptr, loss_ptr, R, BLOCK: tl.constexpr):
    # One program: the rows in blocks of BLOCK, lane i adding rows i, i + BLOCK, ... in order,
    # then one tree sum of the lanes; the same order on every run.
    acc = tl.zeros([BLOCK], tl.float64)
    for r0 in range(0, R, BLOCK):
        r = r0 + tl.arange(0, BLOCK)
        acc += tl.load(abs_cos_ptr + r, mask=r < R, other=0.0)
    total = tl.sum(acc, axis=0)
    _st64(loss_ptr, 0, total / R, None)


@triton.jit
def _decoupling_bwd_kernel(
    g_ptr, x_ptr, y_ptr, k_ptr, gx_ptr, gy_ptr,
    C, S, n_ct, n_st,
    x_sb, x_sc, x_ss,
    y_sb, y_sc, y_ss,
    k_sb, k_sc, k_ss,
    gx_sb, gx_sc, gx_ss,
    gy_sb, gy_sc, gy_ss,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    G = tl.load(g_ptr).to(tl.float64)
    x = _ld(x_ptr, b * x_sb + ch * x_sc + s * x_ss, mask, tl.float64)
    y = _ld(y_ptr, b * y_sb + ch * y_sc + s * y_ss, mask, tl.float64)
    k_off = b * k_sb + ch * k_sc + s * k_ss  # 4 * (n*C + c): row_coefs seen as (N, C, S)
    k0 = _ld(k_ptr, k_off, mask, tl.float64)
    k1 = _ld(k_ptr, k_off + 1, mask, tl.float64)
    k2 = _ld(k_ptr, k_off + 2, mask, tl.float64)
    k3 = _ld(k_ptr, k_off + 3, mask, tl.float64)
    _st64(gx_ptr, b * gx_sb + ch * gx_sc + s * gx_ss, G * (k0 * x + k1 * y), mask)
    _st64(gy_ptr, b * gy_sb + ch * gy_sc + s * gy_ss, G * (k2 * y + k3 * x), mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
@on_tensors_device
def forward(x, y, row_coefs, loss) -> None:
    """loss = mean over rows of |cos| (and row_coefs, when given) from x = delta_c, y = delta_m.

    x, y (N, C, S) strided views; row_coefs None or a contiguous (N*C, 4) float64 tensor; loss a
    0-dim tensor of the inputs' dtype. Outputs are written in place; no checks are made. N*C == 0
    gives NaN (a mean over nothing); S == 0 gives zero rows: every |cos| and k is 0, the loss 0.
    """
    N, C, S = x.shape
    R = N * C
    if R == 0:
        loss.fill_(float("nan"))
        return
    # Rows are per sample: geometry of one sample (never folded), the grid one program per
    # (n, channel tile); _extent still sees the whole views.
    _, _, ch_fast, large, block_c, block_s, n_ct, _, _ = _geometry(1, C, S, x, (x, y), blocks=1)
    large = large or 4 * R + _TILE > _INT32_MAX or N * n_ct > _INT32_MAX
    abs_cos = torch.empty(R, dtype=torch.float64, device=x.device)
    _decoupling_rows_kernel[(N * n_ct,)](
        x, y, abs_cos, abs_cos if row_coefs is None else row_coefs,
        C, S, n_ct,
        *_s3(x, False), *_s3(y, False),
        1.0 / R,
        HAS_K=row_coefs is not None, CH_FAST=ch_fast, LARGE=large,
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
    _decoupling_mean_kernel[(1,)](abs_cos, loss, R, BLOCK=_SUM_BLOCK, num_warps=_NUM_WARPS,
                                  enable_fp_fusion=_FP_FUSION)


@on_tensors_device
def backward(grad_loss, x, y, row_coefs, grad_x, grad_y) -> None:
    """grad_x = G (k0 x + k1 y), grad_y = G (k2 y + k3 x) with G = grad_loss (0-dim, read on the
    device) and k the forward's row_coefs (N*C, 4).

    x, y, grad_x, grad_y (N, C, S) strided views. Outputs are written in place; no checks are made.
    """
    N, C, S = x.shape
    if N * C * S == 0:
        return
    # row_coefs as an (N, C, S) view of k0 (strides 4C, 4, 0): folds and indexes like the others.
    k = row_coefs.view(N, C, 4)[:, :, :1].expand(N, C, S)
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        N, C, S, x, (x, y, k, grad_x, grad_y), blocks=1)
    large = large or 4 * N * C > _INT32_MAX  # k1..k3 sit past k's extent
    _decoupling_bwd_kernel[grid](
        grad_loss, x, y, row_coefs, grad_x, grad_y,
        C, S2, n_ct, n_st,
        *_s3(x, fold), *_s3(y, fold), *_s3(k, fold), *_s3(grad_x, fold), *_s3(grad_y, fold),
        CH_FAST=ch_fast, LARGE=large, BLOCK_C=block_c, BLOCK_S=block_s,
        num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
