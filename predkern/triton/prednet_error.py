"""Triton kernels for ``prednet_error`` (SPEC.md section 4): one launch per direction (two forward
when e_mean is requested).

The Triton twin of ``csrc/prednet_error.h``, with the conventions of ``convlstm_gates.py`` (helpers
in ``_common.py``): every tensor is a 3-D strided view (N, k*C, S) read and written in place through
its own strides (0 for expanded views, 1 on channels for channels_last, anything for slices);
nothing is copied. Block j of the (N, 2C, S) e is channels [j*C, (j+1)*C).

    p = a_hat;  if relu_a_hat: p = relu(p);  if clip: p = min(p, clip_max)       a_hat_out = p
    e = [relu(p - a), relu(a - p)]   (first == pred)   or the two blocks swapped (first == target)
    e_mean[n] = sum of e[n] / (2 C S)                   (optional)

relu and the clip propagate NaN as torch.relu and torch.clamp do. clip_max is rounded as eager
rounds a Python scalar for a tensor of the inputs' dtype (double -> float -> half for half types).
For e_mean each element-wise program also sums the e values it stores (as stored, in the compute
dtype) into a float64 workspace slot indexed by its program id; the programs of one sample are
contiguous in pid order (the batch is the slowest index of ``_tile``'s decomposition, and the
batch is never folded into space then), and a second one-program-per-sample launch adds them in
order and divides in float64: the same bits on every run, no atomics.

The backward recomputes p from a_hat and applies eager autograd's rules: relu passes its gradient
where its output is not <= 0 (so NaN passes), the clip where its input <= clip_max (NaN does not);
e_mean spreads grad_e_mean[n] / (2 C S) over every e element. Blocked paths are selected with
tl.where, never multiplied by a 0/1 mask, so an infinite gradient on them gives 0, not NaN.

The launchers do no argument checking and no autograd: the caller (``predkern.ops.prednet_error``)
validates, allocates the outputs and wraps autograd. Math runs in float32 (float64 for float64
inputs) and is rounded once on store into each pointer's own dtype.
"""
import torch
import triton
import triton.language as tl

from ._common import (_FP_FUSION, _INT32_MAX, _NUM_WARPS, _compute_dtype, _geometry, _ld, _s3, _scalar, _st,
                      _st64, _tile, on_tensors_device)

__all__ = ["forward", "backward"]

_SUM_BLOCK = 1024  # partials per step of the per-sample e_mean sum


# ----------------------------------------------------------------------------------------------
# Element-wise pieces
# ----------------------------------------------------------------------------------------------
@triton.jit
def _relu(x):
    # max(x, 0) written so NaN keeps its value, as torch.relu.
    return tl.where(x < 0.0, 0.0, x)


@triton.jit
def _pred(x, clip_max, ty_ptr, RELU: tl.constexpr, HAS_CLIP: tl.constexpr, CDT: tl.constexpr):
    """(relu(a_hat), p): the prediction after relu, then after the clip (each optional); ty_ptr
    points to the inputs' dtype."""
    r = x
    if RELU:
        r = _relu(x)
    p = r
    if HAS_CLIP:
        # torch.clamp rounds the Python scalar into the tensor's own dtype (via float for half
        # types); min written so NaN keeps its value, as torch.clamp.
        clip = _scalar(clip_max, CDT).to(ty_ptr.dtype.element_ty).to(CDT)
        p = tl.where(r > clip, clip, r)
    return r, p


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _prednet_error_fwd_kernel(
    a_ptr, ah_ptr, e_ptr, p_ptr, part_ptr,
    C, S, n_ct, n_st,
    a_sb, a_sc, a_ss,
    ah_sb, ah_sc, ah_ss,
    e_sb, e_sc, e_ss,
    p_sb, p_sc, p_ss,
    clip_max: tl.float64,
    RELU: tl.constexpr, HAS_CLIP: tl.constexpr, TARGET_FIRST: tl.constexpr,
    HAS_MEAN: tl.constexpr, CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    a = _ld(a_ptr, b * a_sb + ch * a_sc + s * a_ss, mask, CDT)
    x = _ld(ah_ptr, b * ah_sb + ch * ah_sc + s * ah_ss, mask, CDT)
    _, p = _pred(x, clip_max, a_ptr, RELU, HAS_CLIP, CDT)
    pos = _relu(p - a)
    neg = _relu(a - p)  # not -(p - a): where p == a that is -0, which relu keeps (eager writes +0)
    _st(p_ptr, b * p_sb + ch * p_sc + s * p_ss, p, mask)
    e = e_ptr + b * e_sb + s * e_ss
    if TARGET_FIRST:
        _st(e, ch * e_sc, neg, mask)
        _st(e, (C + ch) * e_sc, pos, mask)
    else:
        _st(e, ch * e_sc, pos, mask)
        _st(e, (C + ch) * e_sc, neg, mask)
    if HAS_MEAN:
        # This program's share of sum(e[n]), of the values as stored.
        e_ty = e_ptr.dtype.element_ty
        v = pos.to(e_ty).to(CDT) + neg.to(e_ty).to(CDT)
        part = tl.sum(tl.where(mask, v, 0.0))
        tl.store(part_ptr + tl.program_id(0), part.to(tl.float64))


@triton.jit
def _prednet_error_mean_kernel(part_ptr, mean_ptr, P, count, BLOCK: tl.constexpr):
    # One program per sample: its P partials (pids n*P .. n*P + P - 1) in blocks of BLOCK, lane i
    # adding partials i, i + BLOCK, ... in order, one tree sum of the lanes, / count in float64.
    n = tl.program_id(0).to(tl.int64)
    base = part_ptr + n * P
    acc = tl.zeros([BLOCK], tl.float64)
    for i0 in range(0, P, BLOCK):
        i = i0 + tl.arange(0, BLOCK)
        acc += tl.load(base + i, mask=i < P, other=0.0)
    _st64(mean_ptr, n, tl.sum(acc, axis=0) / count, None)


@triton.jit
def _prednet_error_bwd_kernel(
    ge_ptr, go_ptr, gm_ptr, a_ptr, ah_ptr, ga_ptr, gah_ptr,
    C, S, n_ct, n_st, count,
    ge_sb, ge_sc, ge_ss,
    go_sb, go_sc, go_ss,
    gm_sb, gm_sc, gm_ss,
    a_sb, a_sc, a_ss,
    ah_sb, ah_sc, ah_ss,
    ga_sb, ga_sc, ga_ss,
    gah_sb, gah_sc, gah_ss,
    clip_max: tl.float64,
    HAS_GE: tl.constexpr, HAS_GO: tl.constexpr, HAS_GM: tl.constexpr,
    RELU: tl.constexpr, HAS_CLIP: tl.constexpr, TARGET_FIRST: tl.constexpr,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    a = _ld(a_ptr, b * a_sb + ch * a_sc + s * a_ss, mask, CDT)
    x = _ld(ah_ptr, b * ah_sb + ch * ah_sc + s * ah_ss, mask, CDT)
    r, p = _pred(x, clip_max, a_ptr, RELU, HAS_CLIP, CDT)
    d = p - a

    # Gradients into relu(p - a) (g_pos) and relu(a - p) (g_neg) before their relus.
    g_pos = tl.zeros([BLOCK_C, BLOCK_S], CDT)
    g_neg = tl.zeros([BLOCK_C, BLOCK_S], CDT)
    if HAS_GE:
        ge = ge_ptr + b * ge_sb + s * ge_ss
        g0 = _ld(ge, ch * ge_sc, mask, CDT)
        g1 = _ld(ge, (C + ch) * ge_sc, mask, CDT)
        if TARGET_FIRST:
            g_pos += g1
            g_neg += g0
        else:
            g_pos += g0
            g_neg += g1
    if HAS_GM:
        # grad_e_mean[n] / (2 C S), divided in float64 and rounded once (the correctly rounded
        # quotient, as eager's division in the compute dtype).
        gm = _ld(gm_ptr, b * gm_sb + ch * gm_sc + s * gm_ss, mask, tl.float64)
        gm = (gm / count).to(CDT)
        g_pos += gm
        g_neg += gm
    g_pos = tl.where(d <= 0.0, 0.0, g_pos)   # relu passes where its output is not <= 0
    g_neg = tl.where(-d <= 0.0, 0.0, g_neg)

    if HAS_GO:
        g_p = _ld(go_ptr, b * go_sb + ch * go_sc + s * go_ss, mask, CDT) + g_pos - g_neg
    else:
        g_p = g_pos - g_neg
    _st(ga_ptr, b * ga_sb + ch * ga_sc + s * ga_ss, g_neg - g_pos, mask)
    if HAS_CLIP:
        clip = _scalar(clip_max, CDT).to(a_ptr.dtype.element_ty).to(CDT)
        g_p = tl.where(r <= clip, g_p, 0.0)  # NaN does not pass
    if RELU:
        g_p = tl.where(r <= 0.0, 0.0, g_p)   # NaN passes
    _st(gah_ptr, b * gah_sb + ch * gah_sc + s * gah_ss, g_p, mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
def _launch_geometry(N, C, S, lead, tensors, per_sample):
    """_geometry, except that with ``per_sample`` the batch is never folded (S == 1 included), so
    every program covers one sample and a sample's programs are consecutive in pid order."""
    if per_sample and S == 1 and N > 1:
        _, _, ch_fast, large, block_c, block_s, n_ct, n_st, _ = _geometry(
            1, C, S, lead, tensors, blocks=2)
        n_prog = N * n_ct * n_st
        large = large or n_prog > _INT32_MAX
        return S, False, ch_fast, large, block_c, block_s, n_ct, n_st, (n_prog,)
    return _geometry(N, C, S, lead, tensors, blocks=2)


def _clip_arg(clip_max):
    return 0.0 if clip_max is None else float(clip_max)


@on_tensors_device
def forward(a, a_hat, e, a_hat_out, e_mean, relu_a_hat, clip_max, target_first) -> None:
    """e, a_hat_out (and e_mean when given) from the target a and the prediction a_hat.

    a, a_hat, a_hat_out (N, C, S); e (N, 2C, S); e_mean None or a contiguous (N,) tensor;
    clip_max None or a float. Outputs are written in place; no checks are made.
    """
    N, C, S = a.shape
    if N * C * S == 0:
        if e_mean is not None and N > 0:
            e_mean.fill_(float("nan"))  # mean over 2*C*S == 0 elements, as torch.mean
        return
    has_mean = e_mean is not None
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _launch_geometry(
        N, C, S, a, (a, a_hat, e, a_hat_out), has_mean)
    partial = (torch.empty(grid[0], dtype=torch.float64, device=a.device) if has_mean else None)
    _prednet_error_fwd_kernel[grid](
        a, a_hat, e, a_hat_out, a if partial is None else partial,
        C, S2, n_ct, n_st,
        *_s3(a, fold), *_s3(a_hat, fold), *_s3(e, fold), *_s3(a_hat_out, fold),
        _clip_arg(clip_max),
        RELU=bool(relu_a_hat), HAS_CLIP=clip_max is not None, TARGET_FIRST=bool(target_first),
        HAS_MEAN=has_mean, CH_FAST=ch_fast, LARGE=large, CDT=_compute_dtype(a, a_hat),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
    if has_mean:
        _prednet_error_mean_kernel[(N,)](
            partial, e_mean, n_ct * n_st, 2 * C * S, BLOCK=_SUM_BLOCK, num_warps=_NUM_WARPS,
            enable_fp_fusion=_FP_FUSION)


@on_tensors_device
def backward(grad_e, grad_a_hat_out, grad_e_mean, a, a_hat, grad_a, grad_a_hat, relu_a_hat,
             clip_max, target_first) -> None:
    """grad_a, grad_a_hat from the output gradients and the forward's inputs a, a_hat.

    grad_e (N, 2C, S), grad_a_hat_out (N, C, S), grad_e_mean (N,) contiguous: each may be None
    (that path contributes nothing and is not read). a, a_hat, grad_a, grad_a_hat (N, C, S).
    Outputs are written in place; no checks are made.
    """
    N, C, S = a.shape
    if N * C * S == 0:
        return
    # grad_e_mean seen as an (N, C, S) view of strides (1, 0, 0): folds and indexes like the rest.
    gm = None if grad_e_mean is None else grad_e_mean.view(N, 1, 1).expand(N, C, S)
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        N, C, S, a, (grad_e, grad_a_hat_out, gm, a, a_hat, grad_a, grad_a_hat), blocks=2)
    _prednet_error_bwd_kernel[grid](
        a if grad_e is None else grad_e, a if grad_a_hat_out is None else grad_a_hat_out,
        a if gm is None else gm, a, a_hat, grad_a, grad_a_hat,
        C, S2, n_ct, n_st, 2 * C * S,
        *_s3(grad_e, fold), *_s3(grad_a_hat_out, fold), *_s3(gm, fold), *_s3(a, fold),
        *_s3(a_hat, fold), *_s3(grad_a, fold), *_s3(grad_a_hat, fold),
        _clip_arg(clip_max),
        HAS_GE=grad_e is not None, HAS_GO=grad_a_hat_out is not None, HAS_GM=gm is not None,
        RELU=bool(relu_a_hat), HAS_CLIP=clip_max is not None, TARGET_FIRST=bool(target_first),
        CH_FAST=ch_fast, LARGE=large, CDT=_compute_dtype(a, a_hat),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
