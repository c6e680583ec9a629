// PredRNN-V2 decoupling loss on the CPU (SPEC.md section 3): one reduction pass forward, one
// element-wise pass backward; the per-row math is decoupling_row() in decoupling_loss.h.
// Sums run in double whatever the input dtype (float32 values of 1e20 or 1e-20 neither overflow
// nor underflow), each row in a fixed order and the rows in row order: the same bits every run,
// for any number of threads.
#include <vector>

#include "cpu/vec_helpers.h"
#include "decoupling_loss.h"

namespace predkern::cpu {
namespace CPU_CAPABILITY {
namespace decoupling_loss {

using Vd = Vectorized<double>;
constexpr int64_t kV = Vd::size();
constexpr int64_t kChannelTile = 128;  // channels_last: channels reduced side by side per task

inline double lane_sum(const Vd& v) {  // in lane order
  alignas(64) double buf[kV];
  v.store(buf);
  double s = 0;
  for (int64_t k = 0; k < kV; ++k) s += buf[k];
  return s;
}

// Rows along space (NCHW-like, or any strides): one task per row.
template <typename G>
void reduce_rows(const DecouplingLossForward& p, double* abs_cos, double inv_rows) {
  const int64_t S = p.S;
  at::parallel_for(0, p.N * p.C, std::max<int64_t>(1, 16384 / std::max<int64_t>(S, 1)),
                   [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / p.C, c = r % p.C;
      const auto x = run_of<const G>(p.delta_c, n, c, 0, true);
      const auto y = run_of<const G>(p.delta_m, n, c, 0, true);
      Vd sxx(0.0), syy(0.0), sxy(0.0);
      for (int64_t j = 0; j < S; j += kV) {
        const int64_t m = std::min(kV, S - j);
        const auto xv = load<double>(x, j, m), yv = load<double>(y, j, m);
        sxx = at::vec::fmadd(xv, xv, sxx);
        syy = at::vec::fmadd(yv, yv, syy);
        sxy = at::vec::fmadd(xv, yv, sxy);
      }
      double* k = p.row_coefs ? p.row_coefs + 4 * r : nullptr;
      abs_cos[r] = decoupling_row(lane_sum(sxx), lane_sum(syy), lane_sum(sxy), inv_rows, k);
    }
  });
}

// channels_last: space is the outer loop and a tile of channels is reduced side by side.
template <typename G>
void reduce_channel_tiles(const DecouplingLossForward& p, double* abs_cos, double inv_rows) {
  const int64_t tiles = (p.C + kChannelTile - 1) / kChannelTile;
  at::parallel_for(0, p.N * tiles, 1, [&](int64_t begin, int64_t end) {
    alignas(64) double sxx[kChannelTile], syy[kChannelTile], sxy[kChannelTile];
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / tiles, c0 = (task % tiles) * kChannelTile;
      const int64_t width = std::min(kChannelTile, p.C - c0);
      std::fill(sxx, sxx + width, 0.0);
      std::fill(syy, syy + width, 0.0);
      std::fill(sxy, sxy + width, 0.0);
      for (int64_t s = 0; s < p.S; ++s) {
        const auto x = run_of<const G>(p.delta_c, n, s, c0, false);
        const auto y = run_of<const G>(p.delta_m, n, s, c0, false);
        for (int64_t j = 0; j < width; j += kV) {
          const int64_t m = std::min(kV, width - j);
          const auto xv = load<double>(x, j, m), yv = load<double>(y, j, m);
          at::vec::fmadd(xv, xv, Vd::loadu(sxx + j, m)).store(sxx + j, m);
          at::vec::fmadd(yv, yv, Vd::loadu(syy + j, m)).store(syy + j, m);
          at::vec::fmadd(xv, yv, Vd::loadu(sxy + j, m)).store(sxy + j, m);
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        const int64_t r = n * p.C + c0 + j;
        double* k = p.row_coefs ? p.row_coefs + 4 * r : nullptr;
        abs_cos[r] = decoupling_row(sxx[j], syy[j], sxy[j], inv_rows, k);
      }
    }
  });
}

template <typename G>
void forward_typed(const DecouplingLossForward& p) {
  const int64_t R = p.N * p.C;
  const double inv_rows = 1.0 / static_cast<double>(R);
  std::vector<double> abs_cos(R);
  const bool channels_inner = p.delta_c.sc == 1 && p.delta_c.ss != 1 && p.S > 1;
  if (channels_inner)
    reduce_channel_tiles<G>(p, abs_cos.data(), inv_rows);
  else
    reduce_rows<G>(p, abs_cos.data(), inv_rows);
  double total = 0;
  for (int64_t r = 0; r < R; ++r) total += abs_cos[r];
  *static_cast<G*>(p.loss) = static_cast<G>(total / static_cast<double>(R));
}

template <typename G>
void backward_typed(const DecouplingLossBackward& p) {
  const RowSpace rs = row_space(p.N, p.C, p.S, p.grad_delta_c);
  const int64_t outer_n = rs.space_inner ? p.C : p.S;
  const Vd grad(static_cast<double>(*static_cast<const G*>(p.grad_loss)));

  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    // Along channels, sample n's coefficients transposed to four runs of C (unit stride, loaded
    // as vectors rather than gathered), rebuilt when the row's sample changes.
    std::vector<double> kt(rs.space_inner ? 0 : 4 * p.C);
    int64_t kt_n = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / outer_n, o = row % outer_n;
      const bool si = rs.space_inner;
      const auto x = run_of<const G>(p.delta_c, n, o, 0, si);
      const auto y = run_of<const G>(p.delta_m, n, o, 0, si);
      const auto gx = run_of<G>(p.grad_delta_c, n, o, 0, si);
      const auto gy = run_of<G>(p.grad_delta_m, n, o, 0, si);
      // The coefficients of row (n, c): one per row along space, one per lane along channels.
      Run<const double> k[4];
      if (si) {
        const double* kr = p.row_coefs + 4 * (n * p.C + o);
        for (int i = 0; i < 4; ++i) k[i] = {kr + i, 0};
      } else {
        if (n != kt_n) {
          for (int64_t c = 0; c < p.C; ++c)
            for (int i = 0; i < 4; ++i) kt[i * p.C + c] = p.row_coefs[4 * (n * p.C + c) + i];
          kt_n = n;
        }
        for (int i = 0; i < 4; ++i) k[i] = {kt.data() + i * p.C, 1};
      }
      for (int64_t j = 0; j < rs.inner; j += kV) {
        const int64_t m = std::min(kV, rs.inner - j);
        const auto xv = load<double>(x, j, m), yv = load<double>(y, j, m);
        const auto k0 = load<double>(k[0], j, m), k1 = load<double>(k[1], j, m);
        const auto k2 = load<double>(k[2], j, m), k3 = load<double>(k[3], j, m);
        store(gx, j, m, grad * (k0 * xv + k1 * yv));
        store(gy, j, m, grad * (k2 * yv + k3 * xv));
      }
    }
  });
}

// One dtype for every tensor of this op: Kernel<G, G>.
template <typename G, typename S>
struct ForwardKernel {
  static void run(const DecouplingLossForward& p) { forward_typed<G>(p); }
};

template <typename G, typename S>
struct BackwardKernel {
  static void run(const DecouplingLossBackward& p) { backward_typed<G>(p); }
};

}  // namespace decoupling_loss

void decoupling_loss_forward(const DecouplingLossForward& p) {
  dispatch_dtypes<decoupling_loss::ForwardKernel>(p.dtype, p.dtype, p);
}

void decoupling_loss_backward(const DecouplingLossBackward& p) {
  dispatch_dtypes<decoupling_loss::BackwardKernel>(p.dtype, p.dtype, p);
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu

#ifdef PREDKERN_CPU_DEFAULT_BUILD
PREDKERN_CPU_DISPATCHERS(decoupling_loss, DecouplingLossForward, DecouplingLossBackward)
#endif
