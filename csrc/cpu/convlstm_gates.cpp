// Fused ConvLSTM gate math on the CPU: one pass forward, one pass backward (SPEC.md section 1).
// Each (batch, outer) row runs along the inner dimension with SIMD vectors; the inner dimension is
// space for NCHW-like outputs and channels for channels_last-like ones, so the big operands are
// read with unit stride in both layouts. Operands with other strides are gathered (correct, slower).
#include "cpu/capability.h"
#include "convlstm_gates.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <stdexcept>
#include <type_traits>

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

template <typename T> struct OpMathOf { using type = float; };
template <> struct OpMathOf<double> { using type = double; };

// One operand along the loop's inner dimension: `inc` elements apart (1, 0 or anything else).
template <typename T>
struct Run {
  T* p = nullptr;
  int64_t inc = 0;
};

// The run of element (b, ch_offset + ch, s) for a row: `outer` is ch when space is the inner
// dimension, s otherwise. `b` is the batch index (or the peephole block, through sb).
template <typename T>
Run<T> run_of(const View3& v, int64_t b, int64_t outer, int64_t ch_offset, bool space_inner) {
  T* base = static_cast<T*>(v.ptr) + b * v.sb;
  if (space_inner) return {base + (ch_offset + outer) * v.sc, v.ss};
  return {base + ch_offset * v.sc + outer * v.ss, v.sc};
}

// Loads n <= size() lanes starting at inner index j, converted to the math type T.
template <typename T, typename S>
inline Vectorized<T> load(const Run<S>& r, int64_t j, int64_t n) {
  using Src = std::remove_const_t<S>;
  if constexpr (std::is_same_v<T, Src>) {
    if (r.inc == 1) return Vectorized<T>::loadu(r.p + j, n);
  }
  if (r.inc == 0) return Vectorized<T>(static_cast<T>(r.p[0]));
  alignas(64) T buf[Vectorized<T>::size()];
  for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<T>(r.p[(j + k) * r.inc]);
  return Vectorized<T>::loadu(buf, n);
}

// Stores n lanes at inner index j, rounding once to the storage type S.
template <typename T, typename S>
inline void store(const Run<S>& r, int64_t j, int64_t n, const Vectorized<T>& v) {
  if constexpr (std::is_same_v<T, S>) {
    if (r.inc == 1) {
      v.store(r.p + j, n);
      return;
    }
  }
  alignas(64) T buf[Vectorized<T>::size()];
  v.store(buf);
  for (int64_t k = 0; k < n; ++k) r.p[(j + k) * r.inc] = static_cast<S>(buf[k]);
}

// ATen's polynomial exp (<= 20 ulp, saturates to 0 / inf): ~2x faster than Sleef's. It loses
// NaN, which is put back so that NaN propagates as in eager PyTorch.
template <typename T>
inline Vectorized<T> exp(const Vectorized<T>& x) {
  return Vectorized<T>::blendv(x.exp_u20(), x, x != x);
}

template <typename T>
inline Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + exp(x.neg()));
}

// tanh(x) = 2 sigmoid(2x) - 1: one exp and one division, ~3x faster than Sleef's tanh here, with
// an absolute error of a few ulp of 1 (SPEC.md bounds the error relative to the output's scale).
// +-inf give +-1 and NaN stays NaN.
template <typename T>
inline Vectorized<T> tanh(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), two(T(2));
  return two / (one + exp(x * Vectorized<T>(T(-2)))) - one;
}

// clamp(0.2 x + 0.5, 0, 1) with blends, so NaN passes through as in torch.clamp.
template <typename T>
inline Vectorized<T> hard_sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> zero(T(0)), one(T(1));
  const auto t = x * Vectorized<T>(T(0.2)) + Vectorized<T>(T(0.5));
  const auto lo = Vectorized<T>::blendv(t, zero, t < zero);
  return Vectorized<T>::blendv(lo, one, lo > one);
}

template <typename T>
inline Vectorized<T> act(const Vectorized<T>& x, bool hard) {
  return hard ? hard_sigmoid(x) : sigmoid(x);
}

// grad * d act / dx, given x and y = act(x). torch.clamp passes the gradient on the closed
// interval, so hard_sigmoid's is 0.2 grad where 0 <= 0.2 x + 0.5 <= 1, selected (not multiplied
// by a 0/1 mask) so that an infinite grad outside the interval gives 0 as in eager, not NaN.
template <typename T>
inline Vectorized<T> act_backward(const Vectorized<T>& grad, const Vectorized<T>& x,
                                  const Vectorized<T>& y, bool hard) {
  const Vectorized<T> zero(T(0)), one(T(1));
  if (!hard) return grad * (one - y) * y;
  const auto t = x * Vectorized<T>(T(0.2)) + Vectorized<T>(T(0.5));
  return Vectorized<T>::blendv(zero, grad * Vectorized<T>(T(0.2)), (t >= zero) & (t <= one));
}

struct RowSpace {
  bool space_inner;  // inner dimension: space (NCHW-like output) or channels (channels_last)
  int64_t rows, inner, grain;
};

RowSpace row_space(int64_t B, int64_t C, int64_t S, const View3& out) {
  RowSpace r;
  r.space_inner = out.ss == 1 && S > 1;
  r.inner = r.space_inner ? S : C;
  r.rows = B * (r.space_inner ? C : S);
  r.grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(r.inner, 1));
  return r;
}

template <typename G, typename S>
void forward_typed(const ConvLSTMGatesForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.h_new);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool hard = p.act == GateAct::HardSigmoid;
  const bool has_gh = p.gates_h.ptr, has_bias = p.bias.ptr, has_peep = p.peephole.ptr;
  const bool save = p.pre_act.ptr;
  const Vectorized<T> forget_bias(static_cast<T>(p.forget_bias));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      Run<const G> gx[4], gh[4];
      Run<const S> bias[4], w[3];
      for (int k = 0; k < 4; ++k) {
        const int64_t off = p.slot_block[k] * C;
        gx[k] = run_of<const G>(p.gates_x, b, o, off, si);
        if (has_gh) gh[k] = run_of<const G>(p.gates_h, b, o, off, si);
        if (has_bias) bias[k] = run_of<const S>(p.bias, 0, o, off, si);
      }
      if (has_peep)
        for (int k = 0; k < 3; ++k) w[k] = run_of<const S>(p.peephole, k, o, 0, si);
      const auto c = run_of<const S>(p.c, b, o, 0, si);
      const auto h_out = run_of<G>(p.h_new, b, o, 0, si);
      const auto c_out = run_of<S>(p.c_new, b, o, 0, si);
      Run<S> pre[4];
      if (save)
        for (int k = 0; k < 4; ++k) pre[k] = run_of<S>(p.pre_act, b, o, k * C, si);

      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        Vectorized<T> z[4];
        for (int k = 0; k < 4; ++k) {
          z[k] = load<T>(gx[k], j, n);
          if (has_gh) z[k] = z[k] + load<T>(gh[k], j, n);
          if (has_bias) z[k] = z[k] + load<T>(bias[k], j, n);
        }
        const auto cv = load<T>(c, j, n);
        if (has_peep) {
          z[kI] = z[kI] + load<T>(w[0], j, n) * cv;
          z[kF] = z[kF] + load<T>(w[1], j, n) * cv;
        }
        z[kF] = z[kF] + forget_bias;
        const auto i = act(z[kI], hard), f = act(z[kF], hard), g = tanh(z[kG]);
        const auto cn = f * cv + i * g;
        if (has_peep) z[kO] = z[kO] + load<T>(w[2], j, n) * cn;
        const auto h = act(z[kO], hard) * tanh(cn);
        store(h_out, j, n, h);
        store(c_out, j, n, cn);
        if (save)
          for (int k = 0; k < 4; ++k) store(pre[k], j, n, z[k]);
      }
    }
  });
}

template <typename G, typename S>
void backward_typed(const ConvLSTMGatesBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_c);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool hard = p.act == GateAct::HardSigmoid;
  const bool has_dh = p.grad_h.ptr, has_dcn = p.grad_c_new.ptr, has_peep = p.peephole.ptr;
  const Vectorized<T> zero(T(0)), one(T(1));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      Run<const S> pre[4];
      Run<G> dz_out[4];
      Run<const S> w[3];
      for (int k = 0; k < 4; ++k) {
        pre[k] = run_of<const S>(p.pre_act, b, o, k * C, si);
        dz_out[k] = run_of<G>(p.grad_gates, b, o, p.slot_block[k] * C, si);
      }
      if (has_peep)
        for (int k = 0; k < 3; ++k) w[k] = run_of<const S>(p.peephole, k, o, 0, si);
      const auto c = run_of<const S>(p.c, b, o, 0, si);
      const auto dh_in = has_dh ? run_of<const G>(p.grad_h, b, o, 0, si) : Run<const G>{};
      const auto dcn_in = has_dcn ? run_of<const S>(p.grad_c_new, b, o, 0, si) : Run<const S>{};
      const auto dc_out = run_of<S>(p.grad_c, b, o, 0, si);

      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        const auto zi = load<T>(pre[kI], j, n), zf = load<T>(pre[kF], j, n);
        const auto zg = load<T>(pre[kG], j, n), zo = load<T>(pre[kO], j, n);
        const auto cv = load<T>(c, j, n);
        const auto i = act(zi, hard), f = act(zf, hard), g = tanh(zg), o_ = act(zo, hard);
        const auto cn = f * cv + i * g;
        const auto tc = tanh(cn);
        const auto dh = has_dh ? load<T>(dh_in, j, n) : zero;
        auto dcn = has_dcn ? load<T>(dcn_in, j, n) : zero;
        const auto dzo = act_backward(dh * tc, zo, o_, hard);
        dcn = dcn + dh * o_ * (one - tc * tc);
        if (has_peep) dcn = dcn + dzo * load<T>(w[2], j, n);
        const auto dzi = act_backward(dcn * g, zi, i, hard);
        const auto dzf = act_backward(dcn * cv, zf, f, hard);
        const auto dzg = dcn * i * (one - g * g);
        auto dc = dcn * f;
        if (has_peep) dc = dc + dzi * load<T>(w[0], j, n) + dzf * load<T>(w[1], j, n);
        store(dz_out[kI], j, n, dzi);
        store(dz_out[kF], j, n, dzf);
        store(dz_out[kG], j, n, dzg);
        store(dz_out[kO], j, n, dzo);
        store(dc_out, j, n, dc);
      }
    }
  });
}

template <typename G, typename S>
struct ForwardKernel {
  static void run(const ConvLSTMGatesForward& p) { forward_typed<G, S>(p); }
};

template <typename G, typename S>
struct BackwardKernel {
  static void run(const ConvLSTMGatesBackward& p) { backward_typed<G, S>(p); }
};

// Runs Kernel<G, S> for the (gate, state) dtype pair; SPEC.md section 5 allows equal dtypes and
// the autocast mix (float16 / bfloat16 gates with float32 state).
template <template <typename, typename> class Kernel, typename Params>
void dispatch_dtypes(const Params& p) {
  using c10::BFloat16;
  using c10::Half;
  const DType gate = p.gate_dtype, state = p.state_dtype;
  if (gate == state) {
    switch (gate) {
      case DType::Float32: return Kernel<float, float>::run(p);
      case DType::Float64: return Kernel<double, double>::run(p);
      case DType::Float16: return Kernel<Half, Half>::run(p);
      case DType::BFloat16: return Kernel<BFloat16, BFloat16>::run(p);
    }
  } else if (state == DType::Float32) {
    if (gate == DType::Float16) return Kernel<Half, float>::run(p);
    if (gate == DType::BFloat16) return Kernel<BFloat16, float>::run(p);
  }
  throw std::invalid_argument("predkern: unsupported (gate, state) dtype pair");
}

}  // namespace

void convlstm_gates_forward(const ConvLSTMGatesForward& p) { dispatch_dtypes<ForwardKernel>(p); }

void convlstm_gates_backward(const ConvLSTMGatesBackward& p) { dispatch_dtypes<BackwardKernel>(p); }

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
namespace predkern {
namespace cpu {
#ifdef PREDKERN_CPU_HAS_AVX_VARIANTS
namespace AVX2 {
void convlstm_gates_forward(const ConvLSTMGatesForward& p);
void convlstm_gates_backward(const ConvLSTMGatesBackward& p);
}  // namespace AVX2
namespace AVX512 {
void convlstm_gates_forward(const ConvLSTMGatesForward& p);
void convlstm_gates_backward(const ConvLSTMGatesBackward& p);
}  // namespace AVX512
#endif
}  // namespace cpu

void convlstm_gates_forward_cpu(const ConvLSTMGatesForward& p) {
  using namespace cpu;
  PREDKERN_CPU_DISPATCH(convlstm_gates_forward, p)
}

void convlstm_gates_backward_cpu(const ConvLSTMGatesBackward& p) {
  using namespace cpu;
  PREDKERN_CPU_DISPATCH(convlstm_gates_backward, p)
}
}  // namespace predkern
#endif
