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
  const bool save = p.o_gate.ptr;
  const bool st = streams(p.B * C * p.S, (save ? 3 : 1) * sizeof(G), sizeof(G));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      const auto x_o = run_of<const G>(p.x_cat, b, o, 6 * C, si);
      const auto h_o = run_of<const G>(p.h_cat, b, o, 3 * C, si);
      const auto oc = run_of<const G>(p.o_conv, b, o, 0, si);
      const auto lc = run_of<const G>(p.last_conv, b, o, 0, si);
      const auto h_out = run_of<G>(p.h_new, b, o, 0, si, st);
      const auto o_out = save ? run_of<G>(p.o_gate, b, o, 0, si, st) : Run<G>{};
      const auto t_out = save ? run_of<G>(p.tanh_last, b, o, 0, si, st) : Run<G>{};
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        const auto og = sigmoid(load<T>(x_o, j, n) + load<T>(h_o, j, n) + load<T>(oc, j, n));
        const auto t = tanh(load<T>(lc, j, n));
        store(h_out, j, n, og * t);
        if (save) {
          store(o_out, j, n, og);
          store(t_out, j, n, t);
        }
      }
    }
    stream_fence();
  });
}

// The backward writes the gradients in one pass and each of the nine zero blocks in a pass of its
// own (see parallel_passes).
template <typename G>
void backward_typed(const STLSTMOutputBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_o_conv);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool si = rs.space_inner;
  const bool st = streams(p.B * C * p.S, 13 * sizeof(G), 7 * sizeof(G));
  const Vectorized<T> zero(T(0)), one(T(1));

  const auto grads = [&](int64_t row) {
    const int64_t b = row / outer_n, o = row % outer_n;
    const auto dh = run_of<const G>(p.grad_h, b, o, 0, si);
    const auto og = run_of<const G>(p.o_gate, b, o, 0, si);
    const auto tl = run_of<const G>(p.tanh_last, b, o, 0, si);
    const auto gxo = run_of<G>(p.grad_x_cat, b, o, 6 * C, si, st);
    const auto gho = run_of<G>(p.grad_h_cat, b, o, 3 * C, si, st);
    const auto goc = run_of<G>(p.grad_o_conv, b, o, 0, si, st);
    const auto glc = run_of<G>(p.grad_last_conv, b, o, 0, si, st);
    for (int64_t j = 0; j < rs.inner; j += V) {
      const int64_t n = std::min(V, rs.inner - j);
      const auto g = load<T>(dh, j, n), o_ = load<T>(og, j, n), t = load<T>(tl, j, n);
      // sigmoid' and tanh' from the saved values, associated as eager's sigmoid/tanh_backward
      const auto dzo = sigmoid_backward(g * t, o_);
      store(gxo, j, n, dzo);
      store(gho, j, n, dzo);
      store(goc, j, n, dzo);
      store(glc, j, n, g * o_ * (one - t * t));
    }
  };
  // zero block k < 6 of grad_x_cat, or block k - 6 of grad_h_cat: stage 1's blocks
  const auto zero_block = [&](int k, int64_t row) {
    const int64_t b = row / outer_n, o = row % outer_n;
    const auto out = k < 6 ? run_of<G>(p.grad_x_cat, b, o, k * C, si, st)
                           : run_of<G>(p.grad_h_cat, b, o, (k - 6) * C, si, st);
    for (int64_t j = 0; j < rs.inner; j += V) store(out, j, std::min(V, rs.inner - j), zero);
  };
  const auto pass = [&](int k, int64_t row) {
    if (k == 0)
      grads(row);
    else
      zero_block(k - 1, row);
  };
  parallel_passes(rs, 10, pass);
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
