// PredRNN ST-LSTM stage 1 on the CPU: one pass forward, one pass backward (SPEC.md section 2).
// Same row/SIMD scheme as convlstm_gates.cpp (see vec_helpers.h).
#include "cpu/vec_helpers.h"
#include "stlstm_memory.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace stlstm_memory {

template <typename G, typename S>
void forward_typed(const STLSTMMemoryForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.mem);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool deltas = p.delta_c.ptr, save = p.pre_act.ptr;
  const Vectorized<T> forget_bias(static_cast<T>(p.forget_bias));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      Run<const G> x[6], h[3], mc[3];
      Run<T> pre[6];
      for (int k = 0; k < 6; ++k) {
        x[k] = run_of<const G>(p.x_cat, b, o, k * C, si);
        if (save) pre[k] = run_of<T>(p.pre_act, b, o, k * C, si);
      }
      for (int k = 0; k < 3; ++k) {
        h[k] = run_of<const G>(p.h_cat, b, o, k * C, si);
        mc[k] = run_of<const G>(p.m_cat, b, o, k * C, si);
      }
      const auto c = run_of<const S>(p.c, b, o, 0, si), m = run_of<const S>(p.m, b, o, 0, si);
      const auto c_out = run_of<S>(p.mem, b, o, 0, si), m_out = run_of<S>(p.mem, b, o, C, si);
      Run<G> dc_out, dm_out;
      if (deltas) {
        dc_out = run_of<G>(p.delta_c, b, o, 0, si);
        dm_out = run_of<G>(p.delta_m, b, o, 0, si);
      }
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        Vectorized<T> z[6];
        for (int k = 0; k < 3; ++k) {
          z[k] = load<T>(x[k], j, n) + load<T>(h[k], j, n);
          z[k + 3] = load<T>(x[k + 3], j, n) + load<T>(mc[k], j, n);
        }
        z[kSF] = z[kSF] + forget_bias;
        z[kSFm] = z[kSFm] + forget_bias;
        const auto dc = sigmoid(z[kSI]) * tanh(z[kSG]);
        const auto dm = sigmoid(z[kSIm]) * tanh(z[kSGm]);
        store(c_out, j, n, sigmoid(z[kSF]) * load<T>(c, j, n) + dc);
        store(m_out, j, n, sigmoid(z[kSFm]) * load<T>(m, j, n) + dm);
        if (deltas) {
          store(dc_out, j, n, dc);
          store(dm_out, j, n, dm);
        }
        if (save)
          for (int k = 0; k < 6; ++k) store(pre[k], j, n, z[k]);
      }
    }
  });
}

template <typename G, typename S>
void backward_typed(const STLSTMMemoryBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_c);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool has_dmem = p.grad_mem.ptr, has_ddc = p.grad_delta_c.ptr, has_ddm = p.grad_delta_m.ptr;
  const Vectorized<T> zero(T(0)), one(T(1));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      Run<const T> pre[6];
      Run<G> gx[7], gh[4], gm[3];
      for (int k = 0; k < 6; ++k) pre[k] = run_of<const T>(p.pre_act, b, o, k * C, si);
      for (int k = 0; k < 7; ++k) gx[k] = run_of<G>(p.grad_x_cat, b, o, k * C, si);
      for (int k = 0; k < 4; ++k) gh[k] = run_of<G>(p.grad_h_cat, b, o, k * C, si);
      for (int k = 0; k < 3; ++k) gm[k] = run_of<G>(p.grad_m_cat, b, o, k * C, si);
      const auto c = run_of<const S>(p.c, b, o, 0, si), m = run_of<const S>(p.m, b, o, 0, si);
      Run<const S> dcn_in, dmn_in;
      if (has_dmem) {
        dcn_in = run_of<const S>(p.grad_mem, b, o, 0, si);
        dmn_in = run_of<const S>(p.grad_mem, b, o, C, si);
      }
      const auto ddc_in = has_ddc ? run_of<const G>(p.grad_delta_c, b, o, 0, si) : Run<const G>{};
      const auto ddm_in = has_ddm ? run_of<const G>(p.grad_delta_m, b, o, 0, si) : Run<const G>{};
      const auto gc_out = run_of<S>(p.grad_c, b, o, 0, si);
      const auto gmm_out = run_of<S>(p.grad_m, b, o, 0, si);

      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        const auto zi = load<T>(pre[kSI], j, n), zf = load<T>(pre[kSF], j, n);
        const auto zg = load<T>(pre[kSG], j, n), zim = load<T>(pre[kSIm], j, n);
        const auto zfm = load<T>(pre[kSFm], j, n), zgm = load<T>(pre[kSGm], j, n);
        const auto i = sigmoid(zi), f = sigmoid(zf), g = tanh(zg);
        const auto im = sigmoid(zim), fm = sigmoid(zfm), gm_ = tanh(zgm);
        // An output without a gradient contributes no term (not a zero product, which would
        // turn an inf or NaN on that path into NaN where eager autograd never runs the path).
        // c' = f c + delta_c and delta_c = i g: delta_c's gradient is c''s plus its own.
        Vectorized<T> dcn = zero, dmn = zero, tc = zero, tm = zero;
        if (has_dmem) tc = dcn = load<T>(dcn_in, j, n);
        if (has_dmem) tm = dmn = load<T>(dmn_in, j, n);
        if (has_ddc) tc = has_dmem ? tc + load<T>(ddc_in, j, n) : load<T>(ddc_in, j, n);
        if (has_ddm) tm = has_dmem ? tm + load<T>(ddm_in, j, n) : load<T>(ddm_in, j, n);
        const bool has_tc = has_dmem || has_ddc, has_tm = has_dmem || has_ddm;
        const Vectorized<T> dz[6] = {
            has_tc ? act_backward(tc * g, zi, i, false) : zero,
            has_dmem ? act_backward(dcn * load<T>(c, j, n), zf, f, false) : zero,
            has_tc ? tc * i * (one - g * g) : zero,
            has_tm ? act_backward(tm * gm_, zim, im, false) : zero,
            has_dmem ? act_backward(dmn * load<T>(m, j, n), zfm, fm, false) : zero,
            has_tm ? tm * im * (one - gm_ * gm_) : zero};
        for (int k = 0; k < 6; ++k) store(gx[k], j, n, dz[k]);
        store(gx[6], j, n, zero);
        for (int k = 0; k < 3; ++k) {
          store(gh[k], j, n, dz[k]);
          store(gm[k], j, n, dz[k + 3]);
        }
        store(gh[3], j, n, zero);
        store(gc_out, j, n, has_dmem ? dcn * f : zero);
        store(gmm_out, j, n, has_dmem ? dmn * fm : zero);
      }
    }
  });
}

template <typename G, typename S>
struct ForwardKernel {
  static void run(const STLSTMMemoryForward& p) { forward_typed<G, S>(p); }
};

template <typename G, typename S>
struct BackwardKernel {
  static void run(const STLSTMMemoryBackward& p) { backward_typed<G, S>(p); }
};

}  // namespace stlstm_memory

void stlstm_memory_forward(const STLSTMMemoryForward& p) {
  dispatch_dtypes<stlstm_memory::ForwardKernel>(p.gate_dtype, p.state_dtype, p);
}

void stlstm_memory_backward(const STLSTMMemoryBackward& p) {
  dispatch_dtypes<stlstm_memory::BackwardKernel>(p.gate_dtype, p.state_dtype, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
PREDKERN_CPU_DISPATCHERS(stlstm_memory, STLSTMMemoryForward, STLSTMMemoryBackward)
#endif
