"""Triton kernels for ``stlstm_output`` (SPEC.md section 2, stage 2): one launch per direction.

The Triton twin of ``csrc/stlstm_output.h``, with the conventions of ``convlstm_gates.py`` (helpers
in ``_common.py``): every tensor is a 3-D strided view (B, k*C, S) read in place through its own
strides (0 for expanded views, 1 on channels for channels_last, anything for slices); nothing is
copied. Block j of a (B, k*C, S) view is channels [j*C, (j+1)*C).

    h' = sig(x_o + h_o + o_conv) * tanh(last_conv)

with x_o = block 6 of x_cat (B, 7C, S) and h_o = block 3 of h_cat (B, 4C, S), read in place.
For the backward the forward optionally saves o_gate = sig(x_o + h_o + o_conv) and tanh_last =
tanh(last_conv) (saving the latter rather than last_conv frees the (B, 2C) buffer of a merged
conv_o/conv_last); the backward reads those two, never last_conv, and computes no exp.

The launchers do no argument checking, no allocation and no autograd: the caller validates,
allocates the outputs and wraps autograd. Math runs in float32 (float64 when any operand is float64)
and is rounded once on store into each pointer's own dtype. The backward is eager autograd's,
associated as it is (grad first; sigmoid' as grad*(1-a)*a, tanh' as grad*(1-t*t)), so inf and NaN
propagate alike; it writes the zero blocks of grad_x_cat (0..5) and grad_h_cat (0..2) too.
"""
import triton
import triton.language as tl

from ._common import (_FP_FUSION, _NUM_WARPS, _compute_dtype, _geometry, _ld, _s3, _sigmoid, _sigmoid_bwd, _st,
                      _tanh, _tanh_bwd, _tile, on_tensors_device)

__all__ = ["forward", "backward"]


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _stlstm_output_fwd_kernel(
    x_ptr, h_ptr, oc_ptr, lc_ptr, hn_ptr, o_ptr, t_ptr,
    C, S, n_ct, n_st,
    x_sb, x_sc, x_ss,
    h_sb, h_sc, h_ss,
    oc_sb, oc_sc, oc_ss,
    lc_sb, lc_sc, lc_ss,
    hn_sb, hn_sc, hn_ss,
    o_sb, o_sc, o_ss,
    t_sb, t_sc, t_ss,
    HAS_O: tl.constexpr, HAS_T: tl.constexpr,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    zo = (_ld(x_ptr, b * x_sb + (6 * C + ch) * x_sc + s * x_ss, mask, CDT)
          + _ld(h_ptr, b * h_sb + (3 * C + ch) * h_sc + s * h_ss, mask, CDT)
          + _ld(oc_ptr, b * oc_sb + ch * oc_sc + s * oc_ss, mask, CDT))
    t = _tanh(_ld(lc_ptr, b * lc_sb + ch * lc_sc + s * lc_ss, mask, CDT))
    o = _sigmoid(zo)
    _st(hn_ptr, b * hn_sb + ch * hn_sc + s * hn_ss, o * t, mask)
    if HAS_O:
        _st(o_ptr, b * o_sb + ch * o_sc + s * o_ss, o, mask)
    if HAS_T:
        _st(t_ptr, b * t_sb + ch * t_sc + s * t_ss, t, mask)


@triton.jit
def _stlstm_output_bwd_kernel(
    dh_ptr, o_ptr, t_ptr, gx_ptr, gh_ptr, goc_ptr, glc_ptr,
    C, S, n_ct, n_st,
    dh_sb, dh_sc, dh_ss,
    o_sb, o_sc, o_ss,
    t_sb, t_sc, t_ss,
    gx_sb, gx_sc, gx_ss,
    gh_sb, gh_sc, gh_ss,
    goc_sb, goc_sc, goc_ss,
    glc_sb, glc_sc, glc_ss,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    dh = _ld(dh_ptr, b * dh_sb + ch * dh_sc + s * dh_ss, mask, CDT)
    o = _ld(o_ptr, b * o_sb + ch * o_sc + s * o_ss, mask, CDT)
    t = _ld(t_ptr, b * t_sb + ch * t_sc + s * t_ss, mask, CDT)
    dzo = _sigmoid_bwd(dh * t, o)
    _st(glc_ptr, b * glc_sb + ch * glc_sc + s * glc_ss, _tanh_bwd(dh * o, t), mask)
    _st(goc_ptr, b * goc_sb + ch * goc_sc + s * goc_ss, dzo, mask)

    gx = gx_ptr + b * gx_sb + s * gx_ss
    gh = gh_ptr + b * gh_sb + s * gh_ss
    _st(gx, (6 * C + ch) * gx_sc, dzo, mask)
    _st(gh, (3 * C + ch) * gh_sc, dzo, mask)
    # Blocks i, f, g, i', f', g' belong to stage 1 (stlstm_memory): no gradient from this stage.
    zero = tl.zeros([BLOCK_C, BLOCK_S], CDT)
    for k in tl.static_range(6):
        _st(gx, (k * C + ch) * gx_sc, zero, mask)
    for k in tl.static_range(3):
        _st(gh, (k * C + ch) * gh_sc, zero, mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
@on_tensors_device
def forward(x_cat, h_cat, o_conv, last_conv, h_new, o_gate, tanh_last=None) -> None:
    """h_new (and o_gate, tanh_last when given) from the o blocks of x_cat, h_cat and the two conv
    outputs.

    x_cat (B, 7C, S); h_cat (B, 4C, S); o_conv, last_conv, h_new, o_gate, tanh_last (B, C, S).
    o_gate and tanh_last may be None (not written). Outputs are written in place; no checks are made.
    """
    B, C, S = h_new.shape
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, x_cat, (x_cat, h_cat, o_conv, last_conv, h_new, o_gate, tanh_last), blocks=7)
    _stlstm_output_fwd_kernel[grid](
        x_cat, h_cat, o_conv, last_conv, h_new, h_new if o_gate is None else o_gate,
        h_new if tanh_last is None else tanh_last,
        C, S2, n_ct, n_st,
        *_s3(x_cat, fold), *_s3(h_cat, fold), *_s3(o_conv, fold), *_s3(last_conv, fold),
        *_s3(h_new, fold), *_s3(o_gate, fold), *_s3(tanh_last, fold),
        HAS_O=o_gate is not None, HAS_T=tanh_last is not None, CH_FAST=ch_fast, LARGE=large,
        CDT=_compute_dtype(x_cat, h_cat, o_conv, last_conv),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )


@on_tensors_device
def backward(grad_h, o_gate, tanh_last, grad_x_cat, grad_h_cat, grad_o_conv, grad_last_conv) -> None:
    """grad_x_cat (block 6; blocks 0..5 written 0), grad_h_cat (block 3; blocks 0..2 written 0),
    grad_o_conv and grad_last_conv from the saved o_gate and tanh_last.

    grad_h, o_gate, tanh_last, grad_o_conv, grad_last_conv (B, C, S); grad_x_cat (B, 7C, S);
    grad_h_cat (B, 4C, S). Outputs are written in place; no checks are made.
    """
    B, C, S = o_gate.shape
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, o_gate,
        (grad_h, o_gate, tanh_last, grad_x_cat, grad_h_cat, grad_o_conv, grad_last_conv), blocks=7)
    _stlstm_output_bwd_kernel[grid](
        grad_h, o_gate, tanh_last, grad_x_cat, grad_h_cat, grad_o_conv, grad_last_conv,
        C, S2, n_ct, n_st,
        *_s3(grad_h, fold), *_s3(o_gate, fold), *_s3(tanh_last, fold),
        *_s3(grad_x_cat, fold), *_s3(grad_h_cat, fold), *_s3(grad_o_conv, fold),
        *_s3(grad_last_conv, fold),
        CH_FAST=ch_fast, LARGE=large, CDT=_compute_dtype(grad_h, o_gate, tanh_last),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
