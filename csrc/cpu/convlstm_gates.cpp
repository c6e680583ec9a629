// Fused ConvLSTM gate math on the CPU: one pass forward, one pass backward (SPEC.md section 1).
// Each (batch, outer) row runs along the inner dimension with SIMD vectors; the inner dimension is
// space for NCHW-like outputs and channels for channels_last-like ones, so the big operands are
// read with unit stride in both layouts. Operands with other strides are gathered (correct, slower).
#include "cpu/vec_helpers.h"
#include "convlstm_gates.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace convlstm {

// The saved gates are G or T (see saved_gates in convlstm_gates.h), chosen per call at each store
// and load: a template parameter would compile every kernel twice over for the half types.
template <typename G, typename S>
void forward_typed(const ConvLSTMGatesForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.h_new);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool hard = p.act == GateAct::HardSigmoid;
  const bool has_gh = p.gates_h.ptr, has_bias = p.bias.ptr, has_peep = p.peephole.ptr;
  // low: the saved gates are in G. Where G is the math type (float32, float64) both choices are
  // one type: the constant lets the compiler drop the branch from the inner loops.
  const bool save = p.saved_gates.ptr, low = std::is_same_v<G, T> || p.saved_in_gate_dtype;
  const size_t saved_bytes = save ? 4 * (low ? sizeof(G) : sizeof(T)) : 0;
  const bool st = streams(p.B * C * p.S, sizeof(G) + sizeof(S) + saved_bytes,
                          std::max({sizeof(G), sizeof(S), saved_bytes}));
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
      const auto h_out = run_of<G>(p.h_new, b, o, 0, si, st);
      const auto c_out = run_of<S>(p.c_new, b, o, 0, si, st);
      Run<G> saved_g[4];  // saved gates in the gate dtype (low) or the compute dtype
      Run<T> saved_t[4];
      if (save)
        for (int k = 0; k < 4; ++k) {
          if (low)
            saved_g[k] = run_of<G>(p.saved_gates, b, o, k * C, si, st);
          else
            saved_t[k] = run_of<T>(p.saved_gates, b, o, k * C, si, st);
        }
      const auto save_gate = [&](int k, int64_t j, int64_t n, const Vectorized<T>& v) {
        if (low)
          store(saved_g[k], j, n, v);
        else
          store(saved_t[k], j, n, v);
      };

      // A chunk of the row in three steps (i and g, then f and c_new, then o and h), each with
      // at most eight streams open: all of them would map to the same L1 sets (NCHW blocks lie
      // C*S elements apart), more than its eight ways. i*g and c_new wait in L1 between steps.
      constexpr int64_t K = 16;  // vectors per chunk
      Vectorized<T> ig[K], cn[K];
      const auto z_of = [&](int k, int64_t j, int64_t n) {
        auto z = load<T>(gx[k], j, n);
        if (has_gh) z = z + load<T>(gh[k], j, n);
        if (has_bias) z = z + load<T>(bias[k], j, n);
        return z;
      };
      for (int64_t j0 = 0; j0 < rs.inner; j0 += K * V) {
        const int64_t j1 = std::min(rs.inner, j0 + K * V);
        for (int64_t j = j0, v = 0; j < j1; j += V, ++v) {
          const int64_t n = std::min(V, rs.inner - j);
          auto zi = z_of(kI, j, n);
          if (has_peep) zi = zi + load<T>(w[0], j, n) * load<T>(c, j, n);
          const auto zg = z_of(kG, j, n);
          const auto i = act(zi, hard), g = tanh(zg);
          ig[v] = i * g;
          if (save) {  // see saved_gates in convlstm_gates.h
            save_gate(kI, j, n, hard ? zi : i);
            save_gate(kG, j, n, g);
          }
        }
        for (int64_t j = j0, v = 0; j < j1; j += V, ++v) {
          const int64_t n = std::min(V, rs.inner - j);
          const auto cv = load<T>(c, j, n);
          auto zf = z_of(kF, j, n);
          if (has_peep) zf = zf + load<T>(w[1], j, n) * cv;
          zf = zf + forget_bias;
          const auto f = act(zf, hard);
          cn[v] = f * cv + ig[v];
          store(c_out, j, n, cn[v]);
          if (save) save_gate(kF, j, n, hard ? zf : f);
        }
        for (int64_t j = j0, v = 0; j < j1; j += V, ++v) {
          const int64_t n = std::min(V, rs.inner - j);
          auto zo = z_of(kO, j, n);
          if (has_peep) zo = zo + load<T>(w[2], j, n) * cn[v];
          const auto o_ = act(zo, hard);
          store(h_out, j, n, o_ * tanh(cn[v]));
          if (save) save_gate(kO, j, n, hard ? zo : o_);
        }
      }
    }
    stream_fence();
  });
}

template <typename G, typename S>
void backward_typed(const ConvLSTMGatesBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.B, p.C, p.S, p.grad_c);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool hard = p.act == GateAct::HardSigmoid, low = std::is_same_v<G, T> || p.saved_in_gate_dtype;
  const bool has_dh = p.grad_h.ptr, has_dcn = p.grad_c_new.ptr, has_peep = p.peephole.ptr;
  const bool st = streams(p.B * C * p.S, 4 * sizeof(G) + sizeof(S), 4 * sizeof(G));
  const Vectorized<T> zero(T(0)), one(T(1));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      Run<const G> saved_g[4];  // as in the forward
      Run<const T> saved_t[4];
      Run<G> dz_out[4];
      Run<const S> w[3];
      for (int k = 0; k < 4; ++k) {
        if (low)
          saved_g[k] = run_of<const G>(p.saved_gates, b, o, k * C, si);
        else
          saved_t[k] = run_of<const T>(p.saved_gates, b, o, k * C, si);
        dz_out[k] = run_of<G>(p.grad_gates, b, o, p.slot_block[k] * C, si, st);
      }
      if (has_peep)
        for (int k = 0; k < 3; ++k) w[k] = run_of<const S>(p.peephole, k, o, 0, si);
      const auto c = run_of<const S>(p.c, b, o, 0, si);
      const auto dh_in = has_dh ? run_of<const G>(p.grad_h, b, o, 0, si) : Run<const G>{};
      const auto dcn_in = has_dcn ? run_of<const S>(p.grad_c_new, b, o, 0, si) : Run<const S>{};
      const auto dc_out = run_of<S>(p.grad_c, b, o, 0, si, st);

      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t n = std::min(V, rs.inner - j);
        // v: the saved value of a sigmoid gate, or the saved argument of a hard_sigmoid one
        // (act_backward reads the argument only under hard_sigmoid, the value otherwise).
        const auto saved = [&](int k) { return low ? load<T>(saved_g[k], j, n) : load<T>(saved_t[k], j, n); };
        const auto vi = saved(kI), vf = saved(kF), g = saved(kG), vo = saved(kO);
        const auto cv = load<T>(c, j, n);
        const auto i = hard ? hard_sigmoid(vi) : vi, f = hard ? hard_sigmoid(vf) : vf;
        const auto o_ = hard ? hard_sigmoid(vo) : vo;
        const auto cn = f * cv + i * g;
        const auto tc = tanh(cn);
        // An output without a gradient contributes no term (not a zero product, which would
        // turn an inf or NaN on that path into NaN where eager autograd never runs the path).
        auto dcn = has_dcn ? load<T>(dcn_in, j, n) : zero;
        auto dzo = zero;
        if (has_dh) {
          const auto dh = load<T>(dh_in, j, n);
          dzo = act_backward(dh * tc, vo, o_, hard);
          dcn = has_dcn ? dcn + dh * o_ * (one - tc * tc) : dh * o_ * (one - tc * tc);
        }
        if (has_peep && has_dh) dcn = dcn + dzo * load<T>(w[2], j, n);
        const auto dzi = act_backward(dcn * g, vi, i, hard);
        const auto dzf = act_backward(dcn * cv, vf, f, hard);
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
    stream_fence();
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

}  // namespace convlstm

void convlstm_gates_forward(const ConvLSTMGatesForward& p) {
  dispatch_dtypes<convlstm::ForwardKernel>(p.gate_dtype, p.state_dtype, p);
}

void convlstm_gates_backward(const ConvLSTMGatesBackward& p) {
  dispatch_dtypes<convlstm::BackwardKernel>(p.gate_dtype, p.state_dtype, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
PREDKERN_CPU_DISPATCHERS(convlstm_gates, ConvLSTMGatesForward, ConvLSTMGatesBackward)
#endif
