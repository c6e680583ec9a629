// PredRNN ST-LSTM stage 1 on the CPU: one kernel call each way (SPEC.md section 2).
// Same row/SIMD scheme as convlstm_gates.cpp (see vec_helpers.h).
#include "cpu/vec_helpers.h"
#include "stlstm_memory.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace stlstm_memory {

// Both kernels compute c's half (blocks i, f, g of x_cat and h_cat, and c) and m's half (i', f', g'
// of x_cat and m_cat, and m) as two passes of the same math on other operands (see parallel_passes);
// the backward adds a third, zeroing the o blocks.

template <typename G, typename S>
void forward_typed(const STLSTMMemoryForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.mem);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool si = rs.space_inner, deltas = p.delta_c.ptr, save = p.gates.ptr;
  const bool st = streams(p.B * C * p.S, 2 * sizeof(S) + (deltas ? 2 * sizeof(G) : 0) + (save ? 6 * sizeof(G) : 0),
                          std::max(2 * sizeof(S), save ? 6 * sizeof(G) : 0));
  const Vectorized<T> forget_bias(static_cast<T>(p.forget_bias));

  // half 0: c' from c and h_cat; half 1: m' from m and m_cat
  const auto pass = [&](int half, int64_t row) {
    const int64_t b = row / outer_n, o = row % outer_n;
    const View3& other = half ? p.m_cat : p.h_cat;
    Run<const G> x[3], y[3];
    Run<G> gates[3];
    for (int k = 0; k < 3; ++k) {
      x[k] = run_of<const G>(p.x_cat, b, o, (3 * half + k) * C, si);
      y[k] = run_of<const G>(other, b, o, k * C, si);
      if (save) gates[k] = run_of<G>(p.gates, b, o, (3 * half + k) * C, si, st);
    }
    const auto state = run_of<const S>(half ? p.m : p.c, b, o, 0, si);
    const auto state_out = run_of<S>(p.mem, b, o, half * C, si, st);
    const auto delta_out = deltas ? run_of<G>(half ? p.delta_m : p.delta_c, b, o, 0, si, st) : Run<G>{};
    for (int64_t j = 0; j < rs.inner; j += V) {
      const int64_t n = std::min(V, rs.inner - j);
      Vectorized<T> z[3];
      for (int k = 0; k < 3; ++k) z[k] = load<T>(x[k], j, n) + load<T>(y[k], j, n);
      const auto i = sigmoid(z[0]), f = sigmoid(z[1] + forget_bias), g = tanh(z[2]);
      const auto delta = i * g;
      store(state_out, j, n, f * load<T>(state, j, n) + delta);
      if (deltas) store(delta_out, j, n, delta);
      if (save) {
        store(gates[0], j, n, i);
        store(gates[1], j, n, f);
        store(gates[2], j, n, g);
      }
    }
  };
  parallel_passes(rs, 2, pass);
}

template <typename G, typename S>
void backward_typed(const STLSTMMemoryBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_c);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool si = rs.space_inner, has_dmem = p.grad_mem.ptr;
  const bool st = streams(p.B * C * p.S, 14 * sizeof(G) + 2 * sizeof(S), 7 * sizeof(G));
  const Vectorized<T> zero(T(0)), one(T(1));

  // half 0: c's path (i, f, g); half 1: m's (i', f', g')
  const auto pass = [&](int half, int64_t row) {
    const int64_t b = row / outer_n, o = row % outer_n;
    const View3& grad_delta = half ? p.grad_delta_m : p.grad_delta_c;
    const bool has_dd = grad_delta.ptr;
    Run<const G> gates[3];
    Run<G> gx[3], gy[3];  // gy: the same gate grads in h_cat (c's path) or m_cat (m's path)
    for (int k = 0; k < 3; ++k) {
      gates[k] = run_of<const G>(p.gates, b, o, (3 * half + k) * C, si);
      gx[k] = run_of<G>(p.grad_x_cat, b, o, (3 * half + k) * C, si, st);
      gy[k] = run_of<G>(half ? p.grad_m_cat : p.grad_h_cat, b, o, k * C, si, st);
    }
    const auto state = run_of<const S>(half ? p.m : p.c, b, o, 0, si);
    const auto dnew_in = has_dmem ? run_of<const S>(p.grad_mem, b, o, half * C, si) : Run<const S>{};
    const auto dd_in = has_dd ? run_of<const G>(grad_delta, b, o, 0, si) : Run<const G>{};
    const auto gstate_out = run_of<S>(half ? p.grad_m : p.grad_c, b, o, 0, si, st);
    for (int64_t j = 0; j < rs.inner; j += V) {
      const int64_t n = std::min(V, rs.inner - j);
      const auto i = load<T>(gates[0], j, n), f = load<T>(gates[1], j, n), g = load<T>(gates[2], j, n);
      // An output without a gradient contributes no term (not a zero product, which would
      // turn an inf or NaN on that path into NaN where eager autograd never runs the path).
      // c' = f c + delta_c and delta_c = i g: delta_c's gradient is c''s plus its own.
      Vectorized<T> dnew = zero, t = zero;
      if (has_dmem) t = dnew = load<T>(dnew_in, j, n);
      if (has_dd) t = has_dmem ? t + load<T>(dd_in, j, n) : load<T>(dd_in, j, n);
      const bool has_t = has_dmem || has_dd;
      // sigmoid' and tanh' from the saved values, associated as eager's sigmoid/tanh_backward
      const Vectorized<T> dz[3] = {
          has_t ? sigmoid_backward(t * g, i) : zero,
          has_dmem ? sigmoid_backward(dnew * load<T>(state, j, n), f) : zero,
          has_t ? t * i * (one - g * g) : zero};
      for (int k = 0; k < 3; ++k) {
        store(gx[k], j, n, dz[k]);
        store(gy[k], j, n, dz[k]);
      }
      store(gstate_out, j, n, has_dmem ? dnew * f : zero);
    }
  };
  // the o blocks of grad_x_cat and grad_h_cat: stage 1 does not read them
  const auto zero_o_blocks = [&](int64_t row) {
    const int64_t b = row / outer_n, o = row % outer_n;
    const auto gxo = run_of<G>(p.grad_x_cat, b, o, 6 * C, si, st);
    const auto gho = run_of<G>(p.grad_h_cat, b, o, 3 * C, si, st);
    for (int64_t j = 0; j < rs.inner; j += V) {
      const int64_t n = std::min(V, rs.inner - j);
      store(gxo, j, n, zero);
      store(gho, j, n, zero);
    }
  };
  parallel_passes(rs, 3, [&](int k, int64_t row) {
    if (k < 2)
      pass(k, row);
    else
      zero_o_blocks(row);
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
