// Kernel-facing description of one decoupling_loss call (PredRNN-V2 memory decoupling, SPEC.md
// section 3), shared by the CPU and CUDA kernels; plain C++ (see convlstm_gates.h for View3).
//
// Rows r = n*C + c of x = delta_c and y = delta_m seen as (N, C, S). Per row the kernels reduce
//   sxx = sum_s x^2,  syy = sum_s y^2,  sxy = sum_s x y          (accumulated in double)
// and decoupling_row() turns the three sums into |cos_r| and the backward coefficients. The loss
// is sum_r |cos_r| / R, the rows summed in a fixed order (no atomics: the same bits every run).
// The backward is then one element-wise pass:
//   grad_x = G (k[0] x + k[1] y),   grad_y = G (k[2] y + k[3] x),   G = grad of the loss.
#pragma once
#include <cmath>

#include "convlstm_gates.h"

#if defined(__CUDACC__)
#define PREDKERN_HD __host__ __device__ inline
#else
#define PREDKERN_HD inline
#endif

namespace predkern {

struct DecouplingLossForward {
  int64_t N = 0, C = 0, S = 0;
  DType dtype = DType::Float32;  // delta_c, delta_m and the loss
  View3 delta_c, delta_m;        // (N, C, S)
  double* row_coefs = nullptr;   // optional output (N*C, 4) contiguous, row r = n*C + c
  double* row_abs_cos = nullptr; // workspace (N*C): |cos_r| (the CUDA kernels need it; CPU may ignore)
  void* loss = nullptr;          // output: one element of `dtype`
};

struct DecouplingLossBackward {
  int64_t N = 0, C = 0, S = 0;
  DType dtype = DType::Float32;
  const void* grad_loss = nullptr;      // one element of `dtype` (read on the device, no sync)
  View3 delta_c, delta_m;               // (N, C, S), the forward's inputs
  const double* row_coefs = nullptr;    // (N*C, 4) as written by the forward
  View3 grad_delta_c, grad_delta_m;     // outputs (N, C, S)
};

// The official expression mean|cosine_similarity(F.normalize(x), F.normalize(y))| for one row,
// with torch's exact clamps and autograd rules:
//   F.normalize:        d = max(||x||, 1e-12)     (clamp_min: gradient passes where ||x|| >= 1e-12)
//   cosine_similarity:  e = max(||x/d||, 1e-8)    (clamped under no_grad: the gradient flows
//                        through the norm unclamped, and the norm's gradient is 0 where it is 0)
//   cos = sum((x/d)/e_x * (y/d_y)/e_y);  d|cos|/dcos = sign(cos) (0 at 0, NaN at NaN)
// NaN propagates as through the torch ops (comparisons written so that NaN keeps its value).
// `inv_rows` = 1 / R folds the mean into the coefficients.
PREDKERN_HD double decoupling_row(double sxx, double syy, double sxy, double inv_rows,
                                  double* k /* [4] or nullptr */) {
  const double eps_n = 1e-12, eps_c = 1e-8;
  const double nx = sqrt(sxx), ny = sqrt(syy);
  const double dx = nx < eps_n ? eps_n : nx, dy = ny < eps_n ? eps_n : ny;
  const double na = nx / dx, nb = ny / dy;  // norms of the normalized rows
  const double ea = na < eps_c ? eps_c : na, eb = nb < eps_c ? eps_c : nb;
  const double cos = sxy / (dx * dy) / (ea * eb);
  if (k != nullptr) {
    const double sign = cos > 0 ? 1.0 : (cos < 0 ? -1.0 : cos * 0.0);  // NaN * 0 = NaN
    const double g = sign * inv_rows;
    // d loss / d a = px y + qx x (a = x / dx), then through F.normalize's division and norm.
    const double px = g / (ea * eb * dy), qx = na != 0 ? -g * cos / (ea * na * dx) : 0.0;
    const double py = g / (ea * eb * dx), qy = nb != 0 ? -g * cos / (eb * nb * dy) : 0.0;
    const double rx = nx >= eps_n ? (px * sxy + qx * sxx) / (dx * dx * nx) : 0.0;
    const double ry = ny >= eps_n ? (py * sxy + qy * syy) / (dy * dy * ny) : 0.0;
    k[0] = qx / dx - rx;
    k[1] = px / dx;
    k[2] = qy / dy - ry;
    k[3] = py / dy;
  }
  return fabs(cos);
}

void decoupling_loss_forward_cpu(const DecouplingLossForward& p);
void decoupling_loss_backward_cpu(const DecouplingLossBackward& p);
#ifdef PREDKERN_WITH_CUDA
void decoupling_loss_forward_cuda(const DecouplingLossForward& p, void* stream);
void decoupling_loss_backward_cuda(const DecouplingLossBackward& p, void* stream);
#endif

}  // namespace predkern
