"""Pieces shared by the Triton kernels of every op: element-wise helpers, tiling, launch geometry.

Conventions (see ``convlstm_gates.py`` for the full story): every tensor is a 3-D strided view
(B, k*C, S) read and written in place through its own strides; block j of a (B, k*C, S) view is
channels [j*C, (j+1)*C). Work is cut into (batch, channel tile, space tile) programs on a 1-D
grid, the tile wide along whichever dim is contiguous in the op's main tensor, a plain LSTM
(S == 1) folded batch -> space, and offsets switched to 64-bit (``LARGE``) when any view reaches
past 2**31 - 1 elements. Math runs in the compute dtype ``CDT`` (float32, or float64 when the
state is float64); every load is converted to it and every store rounds once into the pointer's
own dtype.
"""
import functools

import torch
import triton
import triton.language as tl

_TILE = 1024          # elements per program
_MAX_CH_BLOCK = 256   # widest channel tile in the channels-contiguous layout
_NUM_WARPS = 4
# Launches pass enable_fp_fusion explicitly: a * b + c contracted into an fma, as nvcc's default
# in csrc/cuda, whatever Triton's default (Triton 3.9 warns that it flips in 3.10). The ConvLSTM
# kernels pass False instead: their hard-sigmoid clamp boundaries must land where eager's do.
_FP_FUSION = True
_INT32_MAX = 2**31 - 1


# ----------------------------------------------------------------------------------------------
# Element-wise helpers (all in the compute dtype of their argument)
# ----------------------------------------------------------------------------------------------
@triton.jit
def _tanh(x):
    # tanh(|x|) = (1 - e) / (1 + e), e = exp(-2|x|): never overflows; exp(-inf) = 0 gives +-1 for
    # +-inf, NaN stays NaN. For small |x|, where 1 - e cancels, the odd Taylor series to x^9 keeps
    # full relative precision: below 0.03 in float64 and 0.2 in float32 the dropped x^11 term is
    # under 1e-17 and 1e-9 relative, and above them the cancellation costs under ~20 and ~2 ulp.
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    t = (1.0 - e) / (1.0 + e)
    x2 = x * x
    p = x + x * x2 * (-0.3333333333333333333 + x2 * (0.1333333333333333333
                                                     + x2 * (-0.05396825396825396825
                                                             + x2 * 0.02186948853615520282)))
    t = tl.where(x < 0.0, -t, t)
    if x.dtype == tl.float64:
        y = tl.where(ax < 0.03, p, t)
    else:
        y = tl.where(ax < 0.2, p, t)
    return y


@triton.jit
def _sigmoid(x):
    # 1 / (1 + exp(-x)): very negative x overflows exp to inf and gives exactly 0; NaN stays NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _act(x, HARD: tl.constexpr):
    if HARD:
        # Keras hard sigmoid clamp(0.2 x + 0.5, 0, 1), written with comparisons so NaN propagates.
        t = 0.2 * x + 0.5
        y = tl.where(t < 0.0, 0.0, tl.where(t > 1.0, 1.0, t))
    else:
        y = _sigmoid(x)
    return y


@triton.jit
def _sigmoid_bwd(grad, a):
    # grad * d sigmoid(z)/dz given a = sigmoid(z), associated as torch's sigmoid_backward.
    return grad * (1.0 - a) * a


@triton.jit
def _act_bwd(grad, z, a, HARD: tl.constexpr):
    # grad * d act(z)/dz given a = act(z), associated as torch's autograd does. Sigmoid:
    # grad * (1 - a) * a. Hard sigmoid: 0.2 * grad on the closed interval where the float64
    # reference's clamp(0.2 z + 0.5, 0, 1) passes the gradient, z in [-2.5, 2.5] (one more ulp
    # above in float64, where 0.2 z rounds to 0.5), else exactly 0, also for NaN z and for an
    # infinite grad (a select, not a product with a 0/1 mask, which would turn inf into NaN).
    # Comparing z, not a recomputed 0.2 z + 0.5, keeps the kinks where fma contraction would not.
    if HARD:
        if z.dtype == tl.float64:
            hi = tl.full(z.shape, 2.5000000000000004, tl.float64)
        else:
            hi = 2.5
        d = tl.where((z >= -2.5) & (z <= hi), grad * 0.2, 0.0)
    else:
        d = _sigmoid_bwd(grad, a)
    return d


@triton.jit
def _tanh_bwd(grad, t):
    # grad * d tanh(z)/dz given t = tanh(z), associated as torch's tanh_backward: grad * (1 - t*t).
    return grad * (1.0 - t * t)


@triton.jit
def _scalar(v, CDT: tl.constexpr):
    # A host float (an fp64 scalar when compiled, a Python float under the interpreter) rounded once
    # to the compute dtype, as eager PyTorch does with a Python scalar; shape (1, 1), broadcasts.
    return (v + tl.zeros([1, 1], CDT)).to(CDT)


@triton.jit
def _ld(ptr, off, mask, CDT: tl.constexpr):
    """Masked load of ptr[off] converted to the compute dtype (0 where masked off)."""
    return tl.load(ptr + off, mask=mask, other=0.0).to(CDT)


@triton.jit
def _st(ptr, off, val, mask):
    """Masked store of val into ptr[off], rounded once to the pointer's own dtype."""
    tl.store(ptr + off, val.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _st64(ptr, off, val, mask):
    """_st of a float64 value; into a 16-bit dtype through float32, as torch converts a double
    (c10::Half / BFloat16 are built from float), and as the interpreter can (its direct
    float64 -> bfloat16 cast is wrong)."""
    if ptr.dtype.element_ty.primitive_bitwidth < 32:
        _st(ptr, off, val.to(tl.float32), mask)
    else:
        _st(ptr, off, val, mask)


@triton.jit
def _tile(C, S, n_ct, n_st, LARGE: tl.constexpr, CH_FAST: tl.constexpr,
          BLOCK_C: tl.constexpr, BLOCK_S: tl.constexpr):
    """Batch index, channel indices (BLOCK_C, 1), space indices (1, BLOCK_S), C and mask."""
    pid = tl.program_id(0)
    if LARGE:  # 64-bit before any product: pid_s * BLOCK_S alone passes 2^31 on a long S
        pid = pid.to(tl.int64)
        C = tl.cast(C, tl.int64)  # so k * C + ch and everything it scales is 64-bit
    if CH_FAST:  # neighbouring programs walk the contiguous dim
        pid_c = pid % n_ct
        rest = pid // n_ct
        pid_s = rest % n_st
        b = rest // n_st
    else:
        pid_s = pid % n_st
        rest = pid // n_st
        pid_c = rest % n_ct
        b = rest // n_ct
    ch = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)[:, None]
    s = pid_s * BLOCK_S + tl.arange(0, BLOCK_S)[None, :]
    mask = (ch < C) & (s < S)
    return b, ch, s, C, mask


# ----------------------------------------------------------------------------------------------
# Host helpers
# ----------------------------------------------------------------------------------------------
def on_tensors_device(launch):
    """Runs a launcher with its tensors' CUDA device current: Triton launches on the current
    device and its current stream, not on the device of the pointers it is given."""
    @functools.wraps(launch)
    def on_device(*args, **kwargs):
        t = next((a for a in args if isinstance(a, torch.Tensor)), None)
        # entering torch.cuda.device costs host time at every launch: only when it changes anything
        if t is None or t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
            return launch(*args, **kwargs)
        with torch.cuda.device(t.device):
            return launch(*args, **kwargs)
    return on_device


def _next_pow2(n):
    return 1 << (n - 1).bit_length() if n > 1 else 1


def _extent(t):
    """One past the largest element offset a 3-D strided view reaches (0 when absent)."""
    if t is None:
        return 0
    (n0, n1, n2), (s0, s1, s2) = t.shape, t.stride()
    return 1 + (n0 - 1) * s0 + (n1 - 1) * s1 + (n2 - 1) * s2


def _geometry(B, C, S, lead, tensors, bias=None, blocks=4):
    """Launch geometry shared by every kernel.

    ``lead`` is the op's main tensor (chooses the contiguous dim); ``tensors`` are all the 3-D
    views (None allowed); ``bias`` a 1-D per-channel vector or None; ``blocks`` the most channel
    blocks any view holds (kernels index up to blocks * C). Returns (S', fold, ch_fast, large,
    BLOCK_C, BLOCK_S, n_ct, n_st, grid). With S == 1 and B > 1 the batch is folded into space:
    B' = 1, S' = B and every batched view's space stride becomes its batch stride. ``large``
    switches the kernels to 64-bit offsets when any view reaches past 2**31 - 1 elements.
    """
    fold = S == 1 and B > 1
    if fold:
        S = B
        sc, ss = lead.stride(1), lead.stride(0)
    else:
        sc, ss = lead.stride(1), lead.stride(2)
    ch_fast = S == 1 or (sc == 1 and ss != 1)
    if ch_fast:
        block_c = min(_next_pow2(C), _MAX_CH_BLOCK)
        block_s = max(1, min(_next_pow2(S), _TILE // block_c))
    else:
        block_s = min(_next_pow2(S), _TILE)
        block_c = max(1, min(_next_pow2(C), _TILE // block_s))
    n_ct = -(-C // block_c)  # triton.cdiv costs ~2 us per call on the host
    n_st = -(-S // block_s)
    nb = 1 if fold else B
    largest = max(S + _TILE, blocks * C + _TILE, nb * n_ct * n_st, *[_extent(t) for t in tensors])
    if bias is not None:
        largest = max(largest, 1 + (bias.shape[0] - 1) * bias.stride(0))
    large = largest > _INT32_MAX
    return S, fold, ch_fast, large, block_c, block_s, n_ct, n_st, (nb * n_ct * n_st,)


def _s3(t, fold):
    """(batch, channel, space) strides of a batched view, batch folded into space when ``fold``."""
    if t is None:
        return 0, 0, 0
    sb, sc, ss = t.stride()
    return (0, sc, sb) if fold else (sb, sc, ss)


def _compute_dtype(*tensors):
    """float64 when any given tensor (None skipped) is float64, else float32."""
    for t in tensors:
        if t is not None and t.dtype == torch.float64:
            return tl.float64
    return tl.float32
