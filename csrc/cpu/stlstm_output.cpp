// PredRNN ST-LSTM stage 2 on the CPU: h' = sigmoid(x_o + h_o + o_conv) * tanh(last_conv), one pass
// each way, reading the o blocks of x_cat and h_cat where they lie (SPEC.md section 2).
#include "cpu/vec_helpers.h"
#include "stlstm_output.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace stlstm_output {

template <typename G>
void forward_typed(const STLSTMOutputForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.h_new);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool save = p.pre_o.ptr;

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      const auto x_o = run_of<const G>(p.x_cat, b, o, 6 * C, si);
      const auto h_o = run_of<const G>(p.h_cat, b, o, 3 * C, si);
      const auto oc = run_of<const G>(p.o_conv, b, o, 0, si);
      const auto lc = run_of<const G>(p.last_conv, b, o, 0, si);
      const auto h_out = run_of<G>(p.h_new, b, o, 0, si);
      const auto pre_out = save ? run_of<G>(p.pre_o, b, o, 0, si) : Run<G>{};
      const auto t_out = save ? run_of<G>(p.tanh_last, b, o, 0, si) : Run<G>{};
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        const auto zo = load<T>(x_o, j, n) + load<T>(h_o, j, n) + load<T>(oc, j, n);
        const auto t = tanh(load<T>(lc, j, n));
        store(h_out, j, n, sigmoid(zo) * t);
        if (save) {
          store(pre_out, j, n, zo);
          store(t_out, j, n, t);
        }
      }
    }
  });
}

template <typename G>
void backward_typed(const STLSTMOutputBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_o_conv);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const Vectorized<T> zero(T(0)), one(T(1));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      const auto dh = run_of<const G>(p.grad_h, b, o, 0, si);
      const auto pre = run_of<const G>(p.pre_o, b, o, 0, si);
      const auto tl = run_of<const G>(p.tanh_last, b, o, 0, si);
      Run<G> gx[7], gh[4];
      for (int k = 0; k < 7; ++k) gx[k] = run_of<G>(p.grad_x_cat, b, o, k * C, si);
      for (int k = 0; k < 4; ++k) gh[k] = run_of<G>(p.grad_h_cat, b, o, k * C, si);
      const auto goc = run_of<G>(p.grad_o_conv, b, o, 0, si);
      const auto glc = run_of<G>(p.grad_last_conv, b, o, 0, si);
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        const auto zo = load<T>(pre, j, n), g = load<T>(dh, j, n);
        const auto o_ = sigmoid(zo), t = load<T>(tl, j, n);
        const auto dzo = act_backward(g * t, zo, o_, false);
        for (int k = 0; k < 6; ++k) store(gx[k], j, n, zero);
        store(gx[6], j, n, dzo);
        for (int k = 0; k < 3; ++k) store(gh[k], j, n, zero);
        store(gh[3], j, n, dzo);
        store(goc, j, n, dzo);
        store(glc, j, n, g * o_ * (one - t * t));
      }
    }
  });
}

// One dtype for every tensor of this op: Kernel<G, G>.
template <typename G, typename S>
struct ForwardKernel {
  static void run(const STLSTMOutputForward& p) { forward_typed<G>(p); }
};

template <typename G, typename S>
struct BackwardKernel {
  static void run(const STLSTMOutputBackward& p) { backward_typed<G>(p); }
};

}  // namespace stlstm_output

void stlstm_output_forward(const STLSTMOutputForward& p) {
  dispatch_dtypes<stlstm_output::ForwardKernel>(p.dtype, p.dtype, p);
}

void stlstm_output_backward(const STLSTMOutputBackward& p) {
  dispatch_dtypes<stlstm_output::BackwardKernel>(p.dtype, p.dtype, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
PREDKERN_CPU_DISPATCHERS(stlstm_output, STLSTMOutputForward, STLSTMOutputBackward)
#endif
