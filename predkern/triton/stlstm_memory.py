"""Triton kernels for ``stlstm_memory`` (SPEC.md section 2, stage 1): one launch per direction.

The Triton twin of ``csrc/stlstm_memory.h``, with the conventions of ``convlstm_gates.py`` (helpers
in ``_common.py``): every tensor is a 3-D strided view (B, k*C, S) read in place through its own
strides (0 for expanded views, 1 on channels for channels_last, anything for slices); nothing is
copied. Block j of a (B, k*C, S) view is channels [j*C, (j+1)*C).

    x_cat (B, 7C, S): blocks i, f, g, i', f', g', o     h_cat (B, 4C, S): i, f, g, o
    m_cat (B, 3C, S): blocks i', f', g'                  c, m (B, C, S)
    i = sig(x_i + h_i)   f = sig(x_f + h_f + forget_bias)   g = tanh(x_g + h_g)     c' = f c + i g
    i'= sig(x_i'+ m_i')  f'= sig(x_f'+ m_f'+ forget_bias)   g'= tanh(x_g'+ m_g')    m' = f'm + i'g'
    mem (B, 2C, S) = [c', m'];  delta_c = i g;  delta_m = i' g'
    gates (B, 6C, S) = the six gates i, f, g, i', f', g' (values after their activations)

The launchers do no argument checking, no allocation and no autograd: the caller validates,
allocates the outputs and wraps autograd. Math runs in float32 (float64 when the state ``c``/``m``
is float64) and is rounded once on store into each pointer's own dtype (the autocast mix: gates,
deltas, the saved gates and their grads in float16/bfloat16, c, m, mem and their grads in
float32). The backward needs only the gates' values
(sigmoid' = a (1 - a), tanh' = 1 - t^2), so it computes no exp.

The backward is eager autograd's, associated as it is (grad first; sigmoid' as grad*(1-a)*a,
tanh' as grad*(1-t*t)), so inf and NaN propagate alike. An absent gradient is zero; where a path
gets no gradient at all (grad_mem absent: the f, f' terms and grad_c, grad_m; grad_mem and the
delta's grad both absent: the i, g terms) the gradients are exact zeros, as autograd leaves them,
rather than 0 * (a possibly non-finite saved value).
"""
import triton
import triton.language as tl

from ._common import (_FP_FUSION, _NUM_WARPS, _compute_dtype, _geometry, _ld, _s3, _scalar, _sigmoid,
                      _sigmoid_bwd, _st, _tanh, _tanh_bwd, _tile, on_tensors_device)

__all__ = ["forward", "backward"]


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------
@triton.jit
def _stlstm_memory_fwd_kernel(
    x_ptr, h_ptr, mc_ptr, c_ptr, m_ptr, mem_ptr, dc_ptr, dm_ptr, gates_ptr,
    C, S, n_ct, n_st,
    x_sb, x_sc, x_ss,
    h_sb, h_sc, h_ss,
    mc_sb, mc_sc, mc_ss,
    c_sb, c_sc, c_ss,
    m_sb, m_sc, m_ss,
    mem_sb, mem_sc, mem_ss,
    dc_sb, dc_sc, dc_ss,
    dm_sb, dm_sc, dm_ss,
    gates_sb, gates_sc, gates_ss,
    forget_bias: tl.float64,
    HAS_DC: tl.constexpr, HAS_DM: tl.constexpr, HAS_GATES: tl.constexpr,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    x = x_ptr + b * x_sb + s * x_ss
    mem = mem_ptr + b * mem_sb + s * mem_ss
    gates = gates_ptr + b * gates_sb + s * gates_ss
    # forget_bias is an fp64 scalar when compiled (a Python float under the interpreter): round it
    # once to the compute dtype, as eager PyTorch does with a Python scalar.
    fb = _scalar(forget_bias, CDT)

    # Temporal memory c' from x_cat blocks 0..2 and h_cat blocks 0..2.
    h = h_ptr + b * h_sb + s * h_ss
    zi = _ld(x, ch * x_sc, mask, CDT) + _ld(h, ch * h_sc, mask, CDT)
    zf = _ld(x, (C + ch) * x_sc, mask, CDT) + _ld(h, (C + ch) * h_sc, mask, CDT) + fb
    zg = _ld(x, (2 * C + ch) * x_sc, mask, CDT) + _ld(h, (2 * C + ch) * h_sc, mask, CDT)
    c = _ld(c_ptr, b * c_sb + ch * c_sc + s * c_ss, mask, CDT)
    i = _sigmoid(zi)
    f = _sigmoid(zf)
    g = _tanh(zg)
    dc = i * g
    _st(mem, ch * mem_sc, f * c + dc, mask)
    if HAS_DC:
        _st(dc_ptr, b * dc_sb + ch * dc_sc + s * dc_ss, dc, mask)
    if HAS_GATES:
        _st(gates, ch * gates_sc, i, mask)
        _st(gates, (C + ch) * gates_sc, f, mask)
        _st(gates, (2 * C + ch) * gates_sc, g, mask)

    # Spatio-temporal memory m' from x_cat blocks 3..5 and m_cat blocks 0..2.
    mc = mc_ptr + b * mc_sb + s * mc_ss
    zim = _ld(x, (3 * C + ch) * x_sc, mask, CDT) + _ld(mc, ch * mc_sc, mask, CDT)
    zfm = _ld(x, (4 * C + ch) * x_sc, mask, CDT) + _ld(mc, (C + ch) * mc_sc, mask, CDT) + fb
    zgm = _ld(x, (5 * C + ch) * x_sc, mask, CDT) + _ld(mc, (2 * C + ch) * mc_sc, mask, CDT)
    m = _ld(m_ptr, b * m_sb + ch * m_sc + s * m_ss, mask, CDT)
    im = _sigmoid(zim)
    fm = _sigmoid(zfm)
    gm = _tanh(zgm)
    dm = im * gm
    _st(mem, (C + ch) * mem_sc, fm * m + dm, mask)
    if HAS_DM:
        _st(dm_ptr, b * dm_sb + ch * dm_sc + s * dm_ss, dm, mask)
    if HAS_GATES:
        _st(gates, (3 * C + ch) * gates_sc, im, mask)
        _st(gates, (4 * C + ch) * gates_sc, fm, mask)
        _st(gates, (5 * C + ch) * gates_sc, gm, mask)


@triton.jit
def _memory_path_bwd(dn, dd, i, f, g, state, zero, HAS_DN: tl.constexpr, HAS_DD: tl.constexpr):
    """Grads of one memory path new = f*state + delta, delta = i*g, from the saved gates i, f, g;
    dn, dd: grads of new and delta (each only read when present). Returns the grads of the
    arguments of i, f and g, and of state."""
    if HAS_DN:
        if HAS_DD:
            t = dn + dd  # delta feeds both new and the delta output
        else:
            t = dn
        dzi = _sigmoid_bwd(t * g, i)
        dzf = _sigmoid_bwd(dn * state, f)
        dzg = _tanh_bwd(t * i, g)
        dstate = dn * f
    elif HAS_DD:
        dzi = _sigmoid_bwd(dd * g, i)
        dzg = _tanh_bwd(dd * i, g)
        dzf = zero
        dstate = zero
    else:
        dzi = zero
        dzf = zero
        dzg = zero
        dstate = zero
    return dzi, dzf, dzg, dstate


@triton.jit
def _stlstm_memory_bwd_kernel(
    gmem_ptr, gdc_ptr, gdm_ptr, gates_ptr, c_ptr, m_ptr,
    gx_ptr, gh_ptr, gmc_ptr, gc_ptr, gm_ptr,
    C, S, n_ct, n_st,
    gmem_sb, gmem_sc, gmem_ss,
    gdc_sb, gdc_sc, gdc_ss,
    gdm_sb, gdm_sc, gdm_ss,
    gates_sb, gates_sc, gates_ss,
    c_sb, c_sc, c_ss,
    m_sb, m_sc, m_ss,
    gx_sb, gx_sc, gx_ss,
    gh_sb, gh_sc, gh_ss,
    gmc_sb, gmc_sc, gmc_ss,
    gc_sb, gc_sc, gc_ss,
    gm_sb, gm_sc, gm_ss,
    HAS_GMEM: tl.constexpr, HAS_GDC: tl.constexpr, HAS_GDM: tl.constexpr,
    CH_FAST: tl.constexpr, LARGE: tl.constexpr, CDT: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr,
):
    b, ch, s, C, mask = _tile(C, S, n_ct, n_st, LARGE, CH_FAST, BLOCK_C, BLOCK_S)
    gates = gates_ptr + b * gates_sb + s * gates_ss
    gmem = gmem_ptr + b * gmem_sb + s * gmem_ss
    gx = gx_ptr + b * gx_sb + s * gx_ss
    gh = gh_ptr + b * gh_sb + s * gh_ss
    gmc = gmc_ptr + b * gmc_sb + s * gmc_ss
    zero = tl.zeros([BLOCK_C, BLOCK_S], CDT)

    # Temporal path: grad_x_cat / grad_h_cat blocks 0..2 and grad_c.
    i = _ld(gates, ch * gates_sc, mask, CDT)
    f = _ld(gates, (C + ch) * gates_sc, mask, CDT)
    g = _ld(gates, (2 * C + ch) * gates_sc, mask, CDT)
    c = _ld(c_ptr, b * c_sb + ch * c_sc + s * c_ss, mask, CDT)
    dcn = zero
    ddc = zero
    if HAS_GMEM:
        dcn = _ld(gmem, ch * gmem_sc, mask, CDT)
    if HAS_GDC:
        ddc = _ld(gdc_ptr, b * gdc_sb + ch * gdc_sc + s * gdc_ss, mask, CDT)
    dzi, dzf, dzg, dc = _memory_path_bwd(dcn, ddc, i, f, g, c, zero, HAS_GMEM, HAS_GDC)
    _st(gx, ch * gx_sc, dzi, mask)
    _st(gx, (C + ch) * gx_sc, dzf, mask)
    _st(gx, (2 * C + ch) * gx_sc, dzg, mask)
    _st(gh, ch * gh_sc, dzi, mask)
    _st(gh, (C + ch) * gh_sc, dzf, mask)
    _st(gh, (2 * C + ch) * gh_sc, dzg, mask)
    _st(gc_ptr, b * gc_sb + ch * gc_sc + s * gc_ss, dc, mask)

    # Spatio-temporal path: grad_x_cat blocks 3..5, grad_m_cat blocks 0..2 and grad_m.
    im = _ld(gates, (3 * C + ch) * gates_sc, mask, CDT)
    fm = _ld(gates, (4 * C + ch) * gates_sc, mask, CDT)
    gm = _ld(gates, (5 * C + ch) * gates_sc, mask, CDT)
    m = _ld(m_ptr, b * m_sb + ch * m_sc + s * m_ss, mask, CDT)
    dmn = zero
    ddm = zero
    if HAS_GMEM:
        dmn = _ld(gmem, (C + ch) * gmem_sc, mask, CDT)
    if HAS_GDM:
        ddm = _ld(gdm_ptr, b * gdm_sb + ch * gdm_sc + s * gdm_ss, mask, CDT)
    dzim, dzfm, dzgm, dm = _memory_path_bwd(dmn, ddm, im, fm, gm, m, zero, HAS_GMEM, HAS_GDM)
    _st(gx, (3 * C + ch) * gx_sc, dzim, mask)
    _st(gx, (4 * C + ch) * gx_sc, dzfm, mask)
    _st(gx, (5 * C + ch) * gx_sc, dzgm, mask)
    _st(gmc, ch * gmc_sc, dzim, mask)
    _st(gmc, (C + ch) * gmc_sc, dzfm, mask)
    _st(gmc, (2 * C + ch) * gmc_sc, dzgm, mask)
    _st(gm_ptr, b * gm_sb + ch * gm_sc + s * gm_ss, dm, mask)

    # The o blocks belong to stage 2 (stlstm_output): no gradient from this stage.
    _st(gx, (6 * C + ch) * gx_sc, zero, mask)
    _st(gh, (3 * C + ch) * gh_sc, zero, mask)


# ----------------------------------------------------------------------------------------------
# Host launchers
# ----------------------------------------------------------------------------------------------
@on_tensors_device
def forward(x_cat, h_cat, m_cat, c, m, mem, delta_c, delta_m, gates, *, forget_bias) -> None:
    """mem = [c', m'] (and delta_c, delta_m, gates when given) from the gate pre-activations.

    x_cat (B, 7C, S); h_cat (B, 4C, S); m_cat (B, 3C, S); c, m, delta_c, delta_m (B, C, S);
    mem (B, 2C, S); gates (B, 6C, S). delta_c, delta_m, gates may be None (not written).
    Outputs are written in place; no checks are made.
    """
    B, C2, S = mem.shape
    C = C2 // 2
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, x_cat, (x_cat, h_cat, m_cat, c, m, mem, delta_c, delta_m, gates), blocks=7)
    _stlstm_memory_fwd_kernel[grid](
        x_cat, h_cat, m_cat, c, m, mem,
        mem if delta_c is None else delta_c, mem if delta_m is None else delta_m,
        mem if gates is None else gates,
        C, S2, n_ct, n_st,
        *_s3(x_cat, fold), *_s3(h_cat, fold), *_s3(m_cat, fold), *_s3(c, fold), *_s3(m, fold),
        *_s3(mem, fold), *_s3(delta_c, fold), *_s3(delta_m, fold), *_s3(gates, fold),
        float(forget_bias),
        HAS_DC=delta_c is not None, HAS_DM=delta_m is not None, HAS_GATES=gates is not None,
        CH_FAST=ch_fast, LARGE=large, CDT=_compute_dtype(c, m),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )


@on_tensors_device
def backward(grad_mem, grad_delta_c, grad_delta_m, gates, c, m,
             grad_x_cat, grad_h_cat, grad_m_cat, grad_c, grad_m) -> None:
    """grad_x_cat, grad_h_cat, grad_m_cat, grad_c, grad_m from the saved gates.

    grad_mem (B, 2C, S); grad_delta_c, grad_delta_m, c, m, grad_c, grad_m (B, C, S); gates
    (B, 6C, S); grad_x_cat (B, 7C, S) with block 6 written 0; grad_h_cat (B, 4C, S) with block 3
    written 0; grad_m_cat (B, 3C, S). grad_mem, grad_delta_c, grad_delta_m may be None (zero).
    Outputs are written in place; no checks are made.
    """
    B, C, S = c.shape
    if B * C * S == 0:
        return
    S2, fold, ch_fast, large, block_c, block_s, n_ct, n_st, grid = _geometry(
        B, C, S, gates,
        (grad_mem, grad_delta_c, grad_delta_m, gates, c, m, grad_x_cat, grad_h_cat, grad_m_cat,
         grad_c, grad_m), blocks=7)
    _stlstm_memory_bwd_kernel[grid](
        grad_c if grad_mem is None else grad_mem,
        grad_c if grad_delta_c is None else grad_delta_c,
        grad_c if grad_delta_m is None else grad_delta_m,
        gates, c, m, grad_x_cat, grad_h_cat, grad_m_cat, grad_c, grad_m,
        C, S2, n_ct, n_st,
        *_s3(grad_mem, fold), *_s3(grad_delta_c, fold), *_s3(grad_delta_m, fold),
        *_s3(gates, fold), *_s3(c, fold), *_s3(m, fold),
        *_s3(grad_x_cat, fold), *_s3(grad_h_cat, fold), *_s3(grad_m_cat, fold),
        *_s3(grad_c, fold), *_s3(grad_m, fold),
        HAS_GMEM=grad_mem is not None, HAS_GDC=grad_delta_c is not None,
        HAS_GDM=grad_delta_m is not None,
        CH_FAST=ch_fast, LARGE=large, CDT=_compute_dtype(c, m),
        BLOCK_C=block_c, BLOCK_S=block_s, num_warps=_NUM_WARPS, enable_fp_fusion=_FP_FUSION,
    )
