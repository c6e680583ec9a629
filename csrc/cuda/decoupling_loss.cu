// CUDA kernels for decoupling_loss, PredRNN-V2 memory decoupling (SPEC.md section 3):
//   loss = mean over rows r = (n, c) of |cos(F.normalize(delta_c[n, c, :]), F.normalize(delta_m[n, c, :]))|
// Only CUDA runtime headers, so this compiles with a bare nvcc (DESIGN.md).
//
// Forward, two launches (three kernels, one of them for the empty case):
// - decoupling_rows_kernel: a block per (n, tile of channels); its threads are split as (channels
//   of the tile) x (lanes along S), the fast lanes following whichever of channel / space has the
//   smaller stride in delta_c (a warp along S for NCHW rows, 32 channels per warp for channels_last),
//   so consecutive threads read consecutive addresses. Each thread sums x^2, y^2 and x y over its
//   S positions in double (float32 values of 1e20 or 1e-20 neither overflow nor underflow), the
//   lanes are combined by a fixed shared-memory tree, and one thread per row calls decoupling_row()
//   (decoupling_loss.h) for |cos_r| (row_abs_cos) and the backward coefficients (row_coefs).
// - decoupling_mean_kernel: one block of 1024 threads adds row_abs_cos in a fixed order (8 strided
//   running sums per thread, then a fixed tree) and stores sum / R, rounded once. R == 0 stores
//   NaN from the device.
// No atomics anywhere: the same bits on every run.
// Backward, one element-wise launch as in the other kernels (common.cuh): one thread per (n, c, s),
//   grad_x = G (k0 x + k1 y),  grad_y = G (k2 y + k3 x)
// with G = *grad_loss read on the device, all in double (the coefficients of float32 rows near 1e20
// are ~1e-45), each store rounded once from double.
#include "decoupling_loss.h"

#include "common.cuh"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace predkern {
namespace decoupling_loss_cuda {

using namespace cuda_detail;

// Smallest power of two >= n, capped at `cap` (a power of two); 1 for n <= 1.
inline int pow2_at_least(int64_t n, int cap) {
  int v = 1;
  while (v < cap && v < n) v <<= 1;
  return v;
}

// ---------------------------------------------------------------------------------------------
// Forward: row sums, then the mean.
// ---------------------------------------------------------------------------------------------
template <typename X, typename I>
struct RowArgs {
  int64_t C = 0, S = 0;
  int64_t tiles = 0;  // channel tiles per sample
  int64_t work = 0;   // N * tiles
  int tf = 1;         // lanes along the fast dim (threadIdx.x % tf)
  bool chan_fast = false;
  const X* x = nullptr;  // delta_c
  const X* y = nullptr;  // delta_m
  Str<I> x_s, y_s;
  double* abs_cos = nullptr;  // (N*C) |cos_r|
  double* coefs = nullptr;    // optional (N*C, 4)
  double inv_rows = 0.0;      // 1 / (N*C)
};

// |cos_r| and the coefficients of row r from its sums. Out of line: one thread per row runs it,
// and its double divisions would otherwise crowd the registers of the summing loop.
__device__ __noinline__ void finish_row(double sxx, double syy, double sxy, double inv_rows,
                                        int64_t r, double* abs_cos, double* coefs) {
  if (coefs != nullptr) {
    double k[4];
    abs_cos[r] = decoupling_row(sxx, syy, sxy, inv_rows, k);
    for (int j = 0; j < 4; ++j) coefs[4 * r + j] = k[j];
  } else {
    abs_cos[r] = decoupling_row(sxx, syy, sxy, inv_rows, nullptr);
  }
}

constexpr int kRowUnroll = 8;

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) decoupling_rows_kernel(const RowArgs<X, I> a) {
  __shared__ double sh[3][kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const int f = tid % a.tf, m = tid / a.tf;
  const int cl = a.chan_fast ? f : m;           // channel within the tile
  const int sl = a.chan_fast ? m : f;           // lane along S
  const int ts = a.chan_fast ? kThreads / a.tf : a.tf;  // lanes along S
  const int tc = kThreads / ts;                 // channels per tile
  const int step = a.chan_fast ? a.tf : 1;      // tid distance between neighbouring S lanes

  for (int64_t w = blockIdx.x; w < a.work; w += gridDim.x) {
    const int64_t n = w / a.tiles;
    const int64_t c = (w - n * a.tiles) * tc + cl;
    double sxx = 0.0, syy = 0.0, sxy = 0.0;
    if (c < a.C) {
      const I xo = a.x_s.at(static_cast<I>(n), static_cast<I>(c), 0);
      const I yo = a.y_s.at(static_cast<I>(n), static_cast<I>(c), 0);
      // kRowUnroll positions per round, loaded before any is added, so that a thread's loads are
      // in flight together (a plain loop waited on each iteration's two loads in turn: the rows
      // kernel ran at 1.1 TB/s on an H200). The sums still add positions in s order.
      int64_t s = sl;
      for (; s + (kRowUnroll - 1) * ts < a.S; s += kRowUnroll * ts) {
        double xv[kRowUnroll], yv[kRowUnroll];
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          const I si = static_cast<I>(s + u * ts);
          xv[u] = load<double>(a.x + xo + si * a.x_s.ss);
          yv[u] = load<double>(a.y + yo + si * a.y_s.ss);
        }
#pragma unroll
        for (int u = 0; u < kRowUnroll; ++u) {
          sxx += xv[u] * xv[u];
          syy += yv[u] * yv[u];
          sxy += xv[u] * yv[u];
        }
      }
      for (; s < a.S; s += ts) {
        const I si = static_cast<I>(s);
        const double xv = load<double>(a.x + xo + si * a.x_s.ss);
        const double yv = load<double>(a.y + yo + si * a.y_s.ss);
        sxx += xv * xv;
        syy += yv * yv;
        sxy += xv * yv;
      }
    }
    sh[0][tid] = sxx;
    sh[1][tid] = syy;
    sh[2][tid] = sxy;
    // Fixed tree over the S lanes of each channel: lane l adds lane l + h, h = ts/2, ..., 1.
    for (int h = ts / 2; h > 0; h >>= 1) {
      __syncthreads();
      if (sl < h) {
        const int o = tid + h * step;
        sh[0][tid] += sh[0][o];
        sh[1][tid] += sh[1][o];
        sh[2][tid] += sh[2][o];
      }
    }
    if (sl == 0 && c < a.C) {
      finish_row(sh[0][tid], sh[1][tid], sh[2][tid], a.inv_rows, n * a.C + c, a.abs_cos, a.coefs);
    }
    __syncthreads();  // the next work item overwrites sh
  }
}

// One block of kMeanThreads: thread t adds rows t, t + kMeanThreads, ... into kMeanLanes running
// sums (row r into sum (r / kMeanThreads) % kMeanLanes), so each thread has kMeanLanes loads in flight
// (one 256-thread block summing 155648 rows in one chain per thread waited on each load in turn:
// about 250 us on an H200); then a fixed tree. A fixed order: the same bits on every run.
constexpr int kMeanThreads = 1024;
constexpr int kMeanLanes = 8;

template <typename X>
__global__ void __launch_bounds__(kMeanThreads)
    decoupling_mean_kernel(const double* abs_cos, int64_t rows, X* loss) {
  __shared__ double sh[kMeanThreads];
  const int tid = static_cast<int>(threadIdx.x);
  double s[kMeanLanes];
#pragma unroll
  for (int k = 0; k < kMeanLanes; ++k) s[k] = 0.0;
  for (int64_t r0 = tid; r0 < rows; r0 += int64_t{kMeanThreads} * kMeanLanes) {
#pragma unroll
    for (int k = 0; k < kMeanLanes; ++k) {
      const int64_t r = r0 + int64_t{k} * kMeanThreads;
      if (r < rows) s[k] += abs_cos[r];
    }
  }
  double t = 0.0;
#pragma unroll
  for (int k = 0; k < kMeanLanes; ++k) t += s[k];
  sh[tid] = t;
  for (int h = kMeanThreads / 2; h > 0; h >>= 1) {
    __syncthreads();
    if (tid < h) sh[tid] += sh[tid + h];
  }
  if (tid == 0) store_once(loss, sh[0] / static_cast<double>(rows));
}

// The loss over no rows: NaN (torch.mean of an empty tensor), stored from the device.
template <typename X>
__global__ void decoupling_fill_kernel(X* loss, double v) {
  store_once(loss, v);
}

template <typename X, typename I>
RowArgs<X, I> make_row_args(const DecouplingLossForward& p) {
  RowArgs<X, I> a;
  a.C = p.C;
  a.S = p.S;
  a.chan_fast = channels_fast(p.C, p.S, p.delta_c);
  // Up to a warp of lanes along the fast dim; more when the mid dim is too short to fill the block.
  const int64_t fast_n = a.chan_fast ? p.C : p.S, mid_n = a.chan_fast ? p.S : p.C;
  int tf = pow2_at_least(fast_n, 32);
  const int tm_cap = pow2_at_least(mid_n, kThreads);
  if (kThreads / tf > tm_cap) tf = kThreads / tm_cap;
  a.tf = tf;
  const int64_t tc = a.chan_fast ? tf : kThreads / tf;
  a.tiles = (p.C + tc - 1) / tc;
  a.work = p.N * a.tiles;
  a.x = static_cast<const X*>(p.delta_c.ptr);
  a.y = static_cast<const X*>(p.delta_m.ptr);
  a.x_s = make_str<I>(p.delta_c);
  a.y_s = make_str<I>(p.delta_m);
  a.abs_cos = p.row_abs_cos;
  a.coefs = p.row_coefs;
  a.inv_rows = 1.0 / static_cast<double>(p.N * p.C);
  return a;
}

template <typename X, typename I>
void launch_rows_i(const DecouplingLossForward& p, cudaStream_t stream) {
  const RowArgs<X, I> a = make_row_args<X, I>(p);
  decoupling_rows_kernel<X, I><<<blocks_for(a.work), kThreads, 0, stream>>>(a);
  check_launch("decoupling_loss_forward_cuda");
}

inline bool fwd_fits_i32(const DecouplingLossForward& p) {
  const int64_t N = p.N, C = p.C, S = p.S;
  return fits_i32(stacked_numel(N, 1, C, S),
                  {reach(p.delta_c, N, C, S), reach(p.delta_m, N, C, S)});
}

template <typename X>
void launch_fwd(const DecouplingLossForward& p, cudaStream_t stream) {
  const int64_t rows = p.N * p.C;
  X* loss = static_cast<X*>(p.loss);
  if (rows == 0) {
    decoupling_fill_kernel<X><<<1, 1, 0, stream>>>(loss, std::numeric_limits<double>::quiet_NaN());
    check_launch("decoupling_loss_forward_cuda");
    return;
  }
  if (fwd_fits_i32(p))
    launch_rows_i<X, int32_t>(p, stream);
  else
    launch_rows_i<X, int64_t>(p, stream);
  decoupling_mean_kernel<X><<<1, kMeanThreads, 0, stream>>>(p.row_abs_cos, rows, loss);
  check_launch("decoupling_loss_forward_cuda");
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------
template <typename X, typename I>
struct BwdArgs {
  int64_t n = 0;  // N*C*S
  Layout<I> lay;
  I C = 0;
  const X* gl = nullptr;      // grad_loss, one element
  const X* x = nullptr;       // delta_c
  const X* y = nullptr;       // delta_m
  const double* k = nullptr;  // row_coefs (N*C, 4)
  X* gx = nullptr;            // grad_delta_c
  X* gy = nullptr;            // grad_delta_m
  Str<I> x_s, y_s, gx_s, gy_s;
};

template <typename X, typename I>
PK_HD void bwd_element(const BwdArgs<X, I>& a, I idx) {
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const double g = load<double>(a.gl);
  const double* kr = a.k + 4 * (b * a.C + ch);
  const double k0 = load<double>(kr), k1 = load<double>(kr + 1);
  const double k2 = load<double>(kr + 2), k3 = load<double>(kr + 3);
  const double xv = load<double>(a.x + a.x_s.at(b, ch, s));
  const double yv = load<double>(a.y + a.y_s.at(b, ch, s));
  store_once(a.gx + a.gx_s.at(b, ch, s), g * (k0 * xv + k1 * yv));
  store_once(a.gy + a.gy_s.at(b, ch, s), g * (k2 * yv + k3 * xv));
}

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) decoupling_loss_bwd_kernel(const BwdArgs<X, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    bwd_element<X, I>(a, static_cast<I>(k));
}

template <typename X, typename I>
BwdArgs<X, I> make_bwd_args(const DecouplingLossBackward& p) {
  BwdArgs<X, I> a;
  a.n = p.N * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.grad_delta_c);
  a.C = static_cast<I>(p.C);
  a.gl = static_cast<const X*>(p.grad_loss);
  a.x = static_cast<const X*>(p.delta_c.ptr);
  a.y = static_cast<const X*>(p.delta_m.ptr);
  a.k = p.row_coefs;
  a.gx = static_cast<X*>(p.grad_delta_c.ptr);
  a.gy = static_cast<X*>(p.grad_delta_m.ptr);
  a.x_s = make_str<I>(p.delta_c);
  a.y_s = make_str<I>(p.delta_m);
  a.gx_s = make_str<I>(p.grad_delta_c);
  a.gy_s = make_str<I>(p.grad_delta_m);
  return a;
}

template <typename X, typename I>
void launch_bwd_i(const DecouplingLossBackward& p, cudaStream_t stream) {
  const BwdArgs<X, I> a = make_bwd_args<X, I>(p);
  decoupling_loss_bwd_kernel<X, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("decoupling_loss_backward_cuda");
}

inline bool bwd_fits_i32(const DecouplingLossBackward& p) {
  const int64_t N = p.N, C = p.C, S = p.S;
  return fits_i32(stacked_numel(N, 1, C, S),
                  {reach(p.delta_c, N, C, S), reach(p.delta_m, N, C, S),
                   reach(p.grad_delta_c, N, C, S), reach(p.grad_delta_m, N, C, S),
                   4.0 * static_cast<double>(N) * static_cast<double>(C)});  // row_coefs
}

template <typename X>
void launch_bwd(const DecouplingLossBackward& p, cudaStream_t stream) {
  if (bwd_fits_i32(p))
    launch_bwd_i<X, int32_t>(p, stream);
  else
    launch_bwd_i<X, int64_t>(p, stream);
}

}  // namespace decoupling_loss_cuda

void decoupling_loss_forward_cuda(const DecouplingLossForward& p, void* stream) {
  using namespace decoupling_loss_cuda;
  const char* who = "decoupling_loss_forward_cuda";
  require(p.N >= 0 && p.C >= 0 && p.S >= 0, who, "negative size");
  require(p.loss != nullptr, who, "loss is required");
  if (p.N * p.C > 0) {
    require(p.row_abs_cos != nullptr, who, "row_abs_cos (workspace) is required");
    require(p.S == 0 || (p.delta_c.ptr != nullptr && p.delta_m.ptr != nullptr), who,
            "delta_c and delta_m are required");
  }
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_fwd<decltype(x)>(p, st); });
}

void decoupling_loss_backward_cuda(const DecouplingLossBackward& p, void* stream) {
  using namespace decoupling_loss_cuda;
  const char* who = "decoupling_loss_backward_cuda";
  if (empty_or_bad(p.N, p.C, p.S, who)) return;
  require(p.grad_loss != nullptr && p.delta_c.ptr != nullptr && p.delta_m.ptr != nullptr &&
              p.row_coefs != nullptr && p.grad_delta_c.ptr != nullptr &&
              p.grad_delta_m.ptr != nullptr,
          who, "grad_loss, delta_c, delta_m, row_coefs, grad_delta_c and grad_delta_m are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_bwd<decltype(x)>(p, st); });
}

}  // namespace predkern
