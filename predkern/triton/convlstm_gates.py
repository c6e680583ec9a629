"""Triton kernels for ``convlstm_gates`` (SPEC.md section 1): one launch forward, one backward.

The Triton twin of ``csrc/convlstm_gates.h``: every tensor is a 3-D strided view (B, k*C, S) read in
place through its own strides (0 for expanded views, 1 on channels for channels_last, anything for
slices); nothing is copied. ``slot_block[k]`` is the block of ``gates_x`` that holds gate slot k
(0=i, 1=f, 2=g, 3=o); ``saved_gates`` is stored in slot order, ``grad_gates`` in ``gates_x``'s block
order. ``saved_gates`` holds what each derivative needs: the values of sigmoid and tanh gates (so the
backward computes no exp for them) and the arguments of hard_sigmoid gates (the side of a kink).

The launchers do no argument checking and no autograd: the caller (``predkern.ops.convlstm_gates``)
validates, allocates the outputs and wraps autograd. Math runs in float32 (float64 when the inputs
are float64) and is rounded once on store. ``saved_gates`` is allocated in the gates' dtype, or in
that compute dtype with hard_sigmoid or peepholes (``predkern.ops.convlstm_gates.saved_gates_dtype``);
the kernels convert on store and load whatever the pointers' dtypes.

Work is cut into (batch, channel tile, space tile) programs on a 1-D grid. The tile is wide along
whichever dim is contiguous in the main gate tensor (space for NCHW, channels for channels_last), so
both layouts read coalesced. A plain LSTM (S == 1) is folded as batch -> space so its tiles span
(channels x batch) instead of one row per program. The element-wise helpers, the tiling and the
launch geometry are shared with the other ops' kernels in ``_common.py``.
"""
import triton
import triton.language as tl

from ._common import (_NUM_WARPS, _act, _act_bwd, _compute_dtype, _geometry, _s3, _scalar, _tanh,
                      _tile, on_tensors_device)

__all__ = ["forward", "backward"]


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _convlstm_gates_fwd_kernel(
    gx_ptr, gh_ptr, c_ptr, bias_ptr, peep_ptr, h_ptr, cn_ptr, sg_ptr,
    C, S, n_ct, n_st,
    gx_sb, gx_sc, gx_ss,
    gh_sb, gh_sc, gh_ss,
    c_sb, c_sc, c_ss,
    bias_sc,
    p_sb, p_sc, p_ss,
    h_sb, h_sc, h_ss,
    cn_sb, cn_sc, cn_ss,
    sg_sb, sg_sc, sg_ss,
    blk_i, blk_f, blk_g, blk_o,
    forget_bias: tl.float64,
    HAS_GH: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_PEEP: tl.constexpr, HAS_SAVED: tl.constexpr,
    HARD: tl.constexpr, CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)

    # Gate pre-activations z_k = gates_x + gates_h + bias, slot k read from block blk_k.
    gx_base = gx_ptr + b * gx_sb + s * gx_ss
    zi = tl.load(gx_base + (blk_i * C + ch) * gx_sc, mask=mask, other=0.0).to(CDT)
    zf = tl.load(gx_base + (blk_f * C + ch) * gx_sc, mask=mask, other=0.0).to(CDT)
    zg = tl.load(gx_base + (blk_g * C + ch) * gx_sc, mask=mask, other=0.0).to(CDT)
    zo = tl.load(gx_base + (blk_o * C + ch) * gx_sc, mask=mask, other=0.0).to(CDT)
    if HAS_GH:
        gh_base = gh_ptr + b * gh_sb + s * gh_ss
        zi += tl.load(gh_base + (blk_i * C + ch) * gh_sc, mask=mask, other=0.0).to(CDT)
        zf += tl.load(gh_base + (blk_f * C + ch) * gh_sc, mask=mask, other=0.0).to(CDT)
        zg += tl.load(gh_base + (blk_g * C + ch) * gh_sc, mask=mask, other=0.0).to(CDT)
        zo += tl.load(gh_base + (blk_o * C + ch) * gh_sc, mask=mask, other=0.0).to(CDT)
    if HAS_BIAS:
        cmask = ch < C
        zi += tl.load(bias_ptr + (blk_i * C + ch) * bias_sc, mask=cmask, other=0.0).to(CDT)
        zf += tl.load(bias_ptr + (blk_f * C + ch) * bias_sc, mask=cmask, other=0.0).to(CDT)
        zg += tl.load(bias_ptr + (blk_g * C + ch) * bias_sc, mask=cmask, other=0.0).to(CDT)
        zo += tl.load(bias_ptr + (blk_o * C + ch) * bias_sc, mask=cmask, other=0.0).to(CDT)

    c = tl.load(c_ptr + b * c_sb + ch * c_sc + s * c_ss, mask=mask, other=0.0).to(CDT)
    if HAS_PEEP:
        p_off = ch * p_sc + s * p_ss
        w_ci = tl.load(peep_ptr + p_off, mask=mask, other=0.0).to(CDT)
        w_cf = tl.load(peep_ptr + (p_off + p_sb), mask=mask, other=0.0).to(CDT)
        w_co = tl.load(peep_ptr + (p_off + p_sb + p_sb), mask=mask, other=0.0).to(CDT)
        zi += w_ci * c
        zf += w_cf * c
    # forget_bias is an fp64 scalar when compiled (a Python float under the interpreter): round it
    # once to the compute dtype, as eager PyTorch does with a Python scalar.
    zf += _scalar(forget_bias, CDT)

    i = _act(zi, HARD)
    f = _act(zf, HARD)
    g = _tanh(zg)
    cn = f * c + i * g
    if HAS_PEEP:
        zo += w_co * cn
    o = _act(zo, HARD)
    h = o * _tanh(cn)

    tl.store(h_ptr + b * h_sb + ch * h_sc + s * h_ss, h.to(h_ptr.dtype.element_ty), mask=mask)
    tl.store(cn_ptr + b * cn_sb + ch * cn_sc + s * cn_ss, cn.to(cn_ptr.dtype.element_ty), mask=mask)
    if HAS_SAVED:  # slot order: block k holds slot k; arguments of hard_sigmoid gates, else values
        sg = sg_ptr + b * sg_sb + s * sg_ss
        sg_ty = sg_ptr.dtype.element_ty
        if HARD:
            tl.store(sg + ch * sg_sc, zi.to(sg_ty), mask=mask)
            tl.store(sg + (C + ch) * sg_sc, zf.to(sg_ty), mask=mask)
            tl.store(sg + (3 * C + ch) * sg_sc, zo.to(sg_ty), mask=mask)
        else:
            tl.store(sg + ch * sg_sc, i.to(sg_ty), mask=mask)
            tl.store(sg + (C + ch) * sg_sc, f.to(sg_ty), mask=mask)
            tl.store(sg + (3 * C + ch) * sg_sc, o.to(sg_ty), mask=mask)
        tl.store(sg + (2 * C + ch) * sg_sc, g.to(sg_ty), mask=mask)


@triton.jit
def _convlstm_gates_bwd_kernel(
    dh_ptr, dcn_ptr, sg_ptr, c_ptr, peep_ptr, dg_ptr, dc_ptr,
    C, S, n_ct, n_st,
    dh_sb, dh_sc, dh_ss,
    dcn_sb, dcn_sc, dcn_ss,
    sg_sb, sg_sc, sg_ss,
    c_sb, c_sc, c_ss,
    p_sb, p_sc, p_ss,
    dg_sb, dg_sc, dg_ss,
    dc_sb, dc_sc, dc_ss,
    blk_i, blk_f, blk_g, blk_o,
    HAS_DH: tl.constexpr, HAS_DCN: tl.constexpr, HAS_PEEP: tl.constexpr,
    HARD: tl.constexpr, CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)

    # v: the saved value of a sigmoid gate, or the saved argument of a hard_sigmoid one
    # (_act_bwd reads the argument only under HARD, the value otherwise).
    sg = sg_ptr + b * sg_sb + s * sg_ss
    vi = tl.load(sg + ch * sg_sc, mask=mask, other=0.0).to(CDT)
    vf = tl.load(sg + (C + ch) * sg_sc, mask=mask, other=0.0).to(CDT)
    g = tl.load(sg + (2 * C + ch) * sg_sc, mask=mask, other=0.0).to(CDT)
    vo = tl.load(sg + (3 * C + ch) * sg_sc, mask=mask, other=0.0).to(CDT)
    c = tl.load(c_ptr + b * c_sb + ch * c_sc + s * c_ss, mask=mask, other=0.0).to(CDT)

    if HARD:
        i = _act(vi, True)
        f = _act(vf, True)
    else:
        i = vi
        f = vf
    cn = f * c + i * g

    if HAS_DCN:
        dcn = tl.load(dcn_ptr + b * dcn_sb + ch * dcn_sc + s * dcn_ss, mask=mask, other=0.0).to(CDT)
    else:
        dcn = tl.zeros([BLOCK_C, BLOCK_S], CDT)
    if HAS_DH:
        dh = tl.load(dh_ptr + b * dh_sb + ch * dh_sc + s * dh_ss, mask=mask, other=0.0).to(CDT)
        if HARD:
            o = _act(vo, True)
        else:
            o = vo
        tc = _tanh(cn)
        dzo = _act_bwd(dh * tc, vo, o, HARD)
        dcn += dh * o * (1.0 - tc * tc)
    else:
        dzo = tl.zeros([BLOCK_C, BLOCK_S], CDT)
    if HAS_PEEP:
        p_off = ch * p_sc + s * p_ss
        w_ci = tl.load(peep_ptr + p_off, mask=mask, other=0.0).to(CDT)
        w_cf = tl.load(peep_ptr + (p_off + p_sb), mask=mask, other=0.0).to(CDT)
        if HAS_DH:  # o's path only where h has a gradient: 0 * a NaN W_co would be NaN
            w_co = tl.load(peep_ptr + (p_off + p_sb + p_sb), mask=mask, other=0.0).to(CDT)
            dcn += dzo * w_co

    dzi = _act_bwd(dcn * g, vi, i, HARD)
    dzf = _act_bwd(dcn * c, vf, f, HARD)
    dzg = dcn * i * (1.0 - g * g)
    dc = dcn * f
    if HAS_PEEP:
        dc += dzi * w_ci + dzf * w_cf

    dg = dg_ptr + b * dg_sb + s * dg_ss
    dg_ty = dg_ptr.dtype.element_ty
    tl.store(dg + (blk_i * C + ch) * dg_sc, dzi.to(dg_ty), mask=mask)
    tl.store(dg + (blk_f * C + ch) * dg_sc, dzf.to(dg_ty), mask=mask)
    tl.store(dg + (blk_g * C + ch) * dg_sc, dzg.to(dg_ty), mask=mask)
    tl.store(dg + (blk_o * C + ch) * dg_sc, dzo.to(dg_ty), mask=mask)
    tl.store(dc_ptr + b * dc_sb + ch * dc_sc + s * dc_ss, dc.to(dc_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
def _peep3(p, fold):
    """(slot, channel, space) strides of the (3, C, S) peephole; folded space is batch: stride 0."""
    if p is None:
        return 0, 0, 0
    sb, sc, ss = p.stride()
    return (sb, sc, 0) if fold else (sb, sc, ss)


@on_tensors_device
def forward(gates_x, gates_h, c, bias, peephole, h_new, c_new, saved_gates, *,
            slot_block, forget_bias, hard_sigmoid) -> None:
    """h_new, c_new (and saved_gates in slot order when given) from the gate pre-activations.

    gates_x, gates_h, saved_gates: (B, 4C, S); c, h_new, c_new: (B, C, S); peephole (3, C, S);
    bias (4C,).
    gates_h, bias, peephole, saved_gates may be None. Outputs are written in place; no checks are made.
    """
    B, C4, S = gates_x.shape
    C = C4 // 4
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, gates_x, (gates_x, gates_h, c, h_new, c_new, saved_gates, peephole), bias)
    _convlstm_gates_fwd_kernel[grid](
        gates_x, gates_x if gates_h is None else gates_h, c,
        gates_x if bias is None else bias, c if peephole is None else peephole,
        h_new, c_new, h_new if saved_gates is None else saved_gates,
        C, S2, n_ct, n_st,
        *_s3(gates_x, fold), *_s3(gates_h, fold), *_s3(c, fold),
        0 if bias is None else bias.stride(0),
        *_peep3(peephole, fold), *_s3(h_new, fold), *_s3(c_new, fold), *_s3(saved_gates, fold),
        *slot_block, float(forget_bias),
        HAS_GH=gates_h is not None, HAS_BIAS=bias is not None, HAS_PEEP=peephole is not None,
        HAS_SAVED=saved_gates is not None, HARD=bool(hard_sigmoid), CH_FAST=ch_fast, LARGE=large,
        CDT=_compute_dtype(c), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS,
        enable_fp_fusion=False,  # z + W*c rounds the product first, as eager (see the CPU build)
    )


@on_tensors_device
def backward(grad_h, grad_c_new, saved_gates, c, peephole, grad_gates, grad_c, *,
             slot_block, hard_sigmoid) -> None:
    """grad_gates (gates_x's block order) and grad_c from the saved gates (slot order).

    grad_h, grad_c_new, c, grad_c: (B, C, S); saved_gates, grad_gates: (B, 4C, S); peephole (3, C, S).
    grad_h, grad_c_new (treated as zero) and peephole may be None. No checks are made.
    """
    B, C4, S = saved_gates.shape
    C = C4 // 4
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, saved_gates, (saved_gates, grad_gates, c, grad_c, grad_h, grad_c_new, peephole))
    _convlstm_gates_bwd_kernel[grid](
        grad_c if grad_h is None else grad_h, grad_c if grad_c_new is None else grad_c_new,
        saved_gates, c, c if peephole is None else peephole, grad_gates, grad_c,
        C, S2, n_ct, n_st,
        *_s3(grad_h, fold), *_s3(grad_c_new, fold), *_s3(saved_gates, fold), *_s3(c, fold),
        *_peep3(peephole, fold), *_s3(grad_gates, fold), *_s3(grad_c, fold),
        *slot_block,
        HAS_DH=grad_h is not None, HAS_DCN=grad_c_new is not None, HAS_PEEP=peephole is not None,
        HARD=bool(hard_sigmoid), CH_FAST=ch_fast, LARGE=large,
        CDT=_compute_dtype(c), BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS,
        enable_fp_fusion=False,  # z + W*c rounds the product first, as eager (see the CPU build)
    )
