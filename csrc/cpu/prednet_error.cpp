// PredNet error units on the CPU (SPEC.md section 4): one pass forward (e, a_hat_out and, when
// asked, the per-sample mean of e), one pass backward that recomputes the activated prediction
// from a and a_hat. The rules are in prednet_error.h.
#include <vector>

#include "cpu/vec_helpers.h"
#include "prednet_error.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace prednet_error {

// torch.relu: NaN stays NaN.
template <typename T>
inline Vectorized<T> relu(const Vectorized<T>& x) {
  return Vectorized<T>::blendv(x, Vectorized<T>(T(0)), x < Vectorized<T>(T(0)));
}

// clip_max rounded to the tensors' dtype first, as eager compares a half tensor with a scalar,
// so that a value tied with the rounded clip passes its gradient as in eager.
template <typename G, typename T>
inline T clip_value(const PredNetErrorOptions& o) {
  return static_cast<T>(static_cast<G>(o.clip_max));
}

// a_hat -> (relu(a_hat) or a_hat, then the clip); `r` gets the clip's input.
template <typename T>
inline Vectorized<T> activate(const Vectorized<T>& a_hat, const PredNetErrorOptions& o,
                              const Vectorized<T>& clip, Vectorized<T>& r) {
  r = o.relu_a_hat ? relu(a_hat) : a_hat;
  return o.has_clip ? Vectorized<T>::blendv(r, clip, r > clip) : r;  // torch.clamp: NaN stays
}

// The lanes of `v` added in order, in double.
template <typename T>
inline double lane_sum(const Vectorized<T>& v) {
  alignas(64) T buf[Vectorized<T>::size()];
  v.store(buf);
  double s = 0;
  for (int64_t k = 0; k < Vectorized<T>::size(); ++k) s += buf[k];
  return s;
}

template <typename G>
void forward_typed(const PredNetErrorForward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.N, p.C, p.S, p.a_hat_out);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool si = rs.space_inner, want_mean = p.e_mean != nullptr;
  const Vectorized<T> clip(clip_value<G, T>(p.opt));
  // e's block of relu(p - a) and of relu(a - p).
  const int64_t pos_off = p.opt.target_first ? C : 0, neg_off = p.opt.target_first ? 0 : C;
  std::vector<double> row_sum(want_mean ? rs.rows : 0);

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / outer_n, o = row % outer_n;
      const auto a = run_of<const G>(p.a, n, o, 0, si);
      const auto ah = run_of<const G>(p.a_hat, n, o, 0, si);
      const auto e_pos = run_of<G>(p.e, n, o, pos_off, si);
      const auto e_neg = run_of<G>(p.e, n, o, neg_off, si);
      const auto out = run_of<G>(p.a_hat_out, n, o, 0, si);
      // The float lanes go into a double every kFlush vectors, so a long row (2^30 positions)
      // keeps its digits: a float running sum stops growing once it is 2^24 times the terms.
      constexpr int kFlush = 64;
      Vectorized<T> sum(T(0));
      double row_total = 0;
      int pending = 0;
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t m = std::min(V, rs.inner - j);
        Vectorized<T> r(T(0));  // set by activate()
        const auto pv = activate(load<T>(ah, j, m), p.opt, clip, r);
        const auto av = load<T>(a, j, m);
        // a - p, not -(p - a): where p == a that is -0, which relu keeps (eager writes +0)
        const auto pos = relu(pv - av), neg = relu(av - pv);
        store(out, j, m, pv);
        store(e_pos, j, m, pos);
        store(e_neg, j, m, neg);
        if (want_mean) {  // only the m live lanes
          sum = sum + Vectorized<T>::set(Vectorized<T>(T(0)), pos + neg, m);
          if (++pending == kFlush) {
            row_total += lane_sum(sum);
            sum = Vectorized<T>(T(0));
            pending = 0;
          }
        }
      }
      if (want_mean) row_sum[row] = row_total + lane_sum(sum);
    }
  });
  if (!want_mean) return;
  const double count = 2.0 * static_cast<double>(C) * static_cast<double>(p.S);
  G* e_mean = static_cast<G*>(p.e_mean);
  for (int64_t n = 0; n < p.N; ++n) {  // rows of a sample in order: deterministic
    double s = 0;
    for (int64_t o = 0; o < outer_n; ++o) s += row_sum[n * outer_n + o];
    e_mean[n] = static_cast<G>(s / count);  // 0 / 0 = NaN: a mean over nothing
  }
}

template <typename G>
void backward_typed(const PredNetErrorBackward& p) {
  using T = typename OpMathOf<G>::type;
  constexpr int64_t V = Vectorized<T>::size();
  const RowSpace rs = row_space(p.N, p.C, p.S, p.grad_a);
  const int64_t C = p.C, outer_n = rs.space_inner ? p.C : p.S;
  const bool si = rs.space_inner;
  const bool has_e = p.grad_e.ptr, has_out = p.grad_a_hat_out.ptr, has_mean = p.grad_e_mean;
  // Streamed where large (see streams); the forward stores plainly: the next layer's conv_a reads
  // e at once, and at KITTI layer 1 streaming made the forward slower (384 -> 526 us) where it
  // made forward+backward faster (1.71 -> 1.28 ms).
  const bool st = streams(p.N * C * p.S, 2 * sizeof(G), sizeof(G));
  const Vectorized<T> zero(T(0)), clip(clip_value<G, T>(p.opt));
  const int64_t pos_off = p.opt.target_first ? C : 0, neg_off = p.opt.target_first ? 0 : C;
  const T count = static_cast<T>(2.0 * static_cast<double>(C) * static_cast<double>(p.S));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / outer_n, o = row % outer_n;
      const auto a = run_of<const G>(p.a, n, o, 0, si);
      const auto ah = run_of<const G>(p.a_hat, n, o, 0, si);
      const auto ge_pos = has_e ? run_of<const G>(p.grad_e, n, o, pos_off, si) : Run<const G>{};
      const auto ge_neg = has_e ? run_of<const G>(p.grad_e, n, o, neg_off, si) : Run<const G>{};
      const auto g_out = has_out ? run_of<const G>(p.grad_a_hat_out, n, o, 0, si) : Run<const G>{};
      const auto ga = run_of<G>(p.grad_a, n, o, 0, si, st);
      const auto gah = run_of<G>(p.grad_a_hat, n, o, 0, si, st);
      // grad_e_mean[n] / (2 C S) reaches every element of e (torch.mean's backward).
      const Vectorized<T> g_mean(
          has_mean ? static_cast<T>(static_cast<const G*>(p.grad_e_mean)[n]) / count : T(0));
      for (int64_t j = 0; j < rs.inner; j += V) {
        const int64_t m = std::min(V, rs.inner - j);
        Vectorized<T> r(T(0));  // set by activate()
        const auto d = activate(load<T>(ah, j, m), p.opt, clip, r) - load<T>(a, j, m);
        auto g_pos = has_e ? load<T>(ge_pos, j, m) : zero;
        auto g_neg = has_e ? load<T>(ge_neg, j, m) : zero;
        if (has_mean) {
          g_pos = g_pos + g_mean;
          g_neg = g_neg + g_mean;
        }
        // relu's backward passes where its output is not <= 0 (NaN passes); selects, so that an
        // infinite gradient on a closed path gives 0.
        g_pos = Vectorized<T>::blendv(g_pos, zero, d <= zero);
        g_neg = Vectorized<T>::blendv(g_neg, zero, d >= zero);
        auto g_p = g_pos - g_neg;
        if (has_out) g_p = load<T>(g_out, j, m) + g_p;
        if (p.opt.has_clip) g_p = Vectorized<T>::blendv(zero, g_p, r <= clip);  // NaN: blocked
        if (p.opt.relu_a_hat) g_p = Vectorized<T>::blendv(g_p, zero, r <= zero);
        store(ga, j, m, g_neg - g_pos);
        store(gah, j, m, g_p);
      }
    }
    stream_fence();
  });
}

// One dtype for every tensor of this op: Kernel<G, G>.
template <typename G, typename S>
struct ForwardKernel {
  static void run(const PredNetErrorForward& p) { forward_typed<G>(p); }
};

template <typename G, typename S>
struct BackwardKernel {
  static void run(const PredNetErrorBackward& p) { backward_typed<G>(p); }
};

}  // namespace prednet_error

void prednet_error_forward(const PredNetErrorForward& p) {
  dispatch_dtypes<prednet_error::ForwardKernel>(p.dtype, p.dtype, p);
}

void prednet_error_backward(const PredNetErrorBackward& p) {
  dispatch_dtypes<prednet_error::BackwardKernel>(p.dtype, p.dtype, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
PREDKERN_CPU_DISPATCHERS(prednet_error, PredNetErrorForward, PredNetErrorBackward)
#endif
