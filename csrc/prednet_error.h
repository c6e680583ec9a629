// Kernel-facing description of one prednet_error call (PredNet error units, SPEC.md section 4),
// shared by the CPU and CUDA kernels; plain C++ (see convlstm_gates.h for View3).
//
//   p = a_hat;  if relu_a_hat: p = relu(p);  if has_clip: p = min(p, clip_max)    a_hat_out = p
//   e = [relu(p - a), relu(a - p)]  (first == pred)   or   [relu(a - p), relu(p - a)]  (target)
//   e_mean[n] = sum of e[n] / (2 C S)                 (optional; summed in a fixed order)
// Backward, eager autograd's rules: relu passes its gradient where its output is not <= 0 (so
// NaN passes), the clip where its input <= clip_max (NaN does not), e_mean spreads
// grad_e_mean[n] / (2 C S) over every e element. The backward recomputes p from a and a_hat
// (the saved inputs), so the masks are exact, ties at the clip included.
#pragma once
#include "convlstm_gates.h"

namespace predkern {

struct PredNetErrorOptions {
  bool relu_a_hat = true;
  bool has_clip = false;
  double clip_max = 0.0;
  bool target_first = false;  // first == "target": e = [relu(a - p), relu(p - a)]
};

struct PredNetErrorForward {
  int64_t N = 0, C = 0, S = 0;
  DType dtype = DType::Float32;
  PredNetErrorOptions opt;
  View3 a, a_hat;            // (N, C, S)
  View3 e;                   // output (N, 2C, S)
  View3 a_hat_out;           // output (N, C, S)
  void* e_mean = nullptr;    // optional output (N,) contiguous, `dtype`
  double* partial = nullptr; // CUDA workspace for e_mean: (N, prednet_error_chunks(C, S)) doubles,
                             // the sums of e over consecutive chunks of a sample's C*S positions
};

// e_mean on CUDA: each sample's C*S (channel, position) pairs, in the kernel's flat order, are cut
// into chunks of kPredNetErrorChunk; one block sums a chunk, a second launch adds the chunks in order.
// 1024 (4 per thread): at PredNet's KITTI layer 0 (N=4, C*S=61440) 4096 made only 60 blocks for
// the H200's 132 multiprocessors, and the forward reached 29% of a clone's device bandwidth.
constexpr int64_t kPredNetErrorChunk = 1024;
inline int64_t prednet_error_chunks(int64_t C, int64_t S) {
  return (C * S + kPredNetErrorChunk - 1) / kPredNetErrorChunk;
}

struct PredNetErrorBackward {
  int64_t N = 0, C = 0, S = 0;
  DType dtype = DType::Float32;
  PredNetErrorOptions opt;
  View3 grad_e;                       // (N, 2C, S), optional
  View3 grad_a_hat_out;               // (N, C, S), optional
  const void* grad_e_mean = nullptr;  // (N,) contiguous, optional
  View3 a, a_hat;                     // the forward's inputs
  View3 grad_a, grad_a_hat;           // outputs (N, C, S)
};

void prednet_error_forward_cpu(const PredNetErrorForward& p);
void prednet_error_backward_cpu(const PredNetErrorBackward& p);
#ifdef PREDKERN_WITH_CUDA
void prednet_error_forward_cuda(const PredNetErrorForward& p, void* stream);
void prednet_error_backward_cuda(const PredNetErrorBackward& p, void* stream);
#endif

}  // namespace predkern
