// CUDA kernels for prednet_error, PredNet's error units (SPEC.md section 4):
//   p = min(relu(a_hat), clip_max) (each step optional),  a_hat_out = p,
//   e = [relu(p - a), relu(a - p)] (first == "pred") or the two blocks swapped (first == "target"),
//   e_mean[n] = sum of e[n] / (2 C S) (optional).
// Only CUDA runtime headers, so this compiles with a bare nvcc (DESIGN.md).
//
// Same scheme as stlstm_output.cu (helpers in common.cuh): one thread per (n, c, s) element, the
// flat index decomposed so that consecutive threads follow the smaller of the channel / space
// strides of the main output (e forward, grad_a backward); one launch per direction. With e_mean
// the forward instead runs one block per (n, chunk of kPredNetErrorChunk of the sample's C*S
// positions in that same flat order): the block writes the same outputs and sums its e values
// (float accumulate, double for float64; the values as stored, i.e. rounded to the dtype) by a
// fixed tree into `partial`; a second launch, one block per sample, adds the chunks in a fixed order
// in double and stores sum / (2 C S) rounded once. No atomics: the same bits on every run.
// Activations propagate NaN (no fmin/fmax); the backward uses selects, so an infinite gradient on
// a blocked path gives 0, not NaN. Math in float (double for float64), each store rounds once.
#include "prednet_error.h"

#include "common.cuh"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>

namespace predkern {
namespace prednet_error_cuda {

using namespace cuda_detail;

static_assert(kPredNetErrorChunk % kThreads == 0, "a chunk is a whole number of block strides");
constexpr int kPerThread = static_cast<int>(kPredNetErrorChunk / kThreads);

// relu with NaN propagating (relu(NaN) = NaN, as torch.relu).
template <typename T>
PK_HD T relu(T v) {
  return v > T(0) ? v : (v == v ? T(0) : v);
}

// torch.clamp(v, max=m): NaN v stays NaN.
template <typename T>
PK_HD T clamp_max(T v, T m) {
  return v > m ? m : v;
}

// v rounded to X and back (the value a store of v writes).
template <typename X, typename T>
PK_HD T round_as(T v) {
  X t;
  store(&t, v);
  return static_cast<T>(to_op(t));
}

// clip_max as the kernels compare it: rounded to the tensors' dtype as torch casts the Scalar
// bound (half and bfloat16 through float, as c10's conversions and the CPU kernel round it), then
// widened to the math type.
template <typename X>
OpMath<X> clip_value(double clip_max) {
  X t;
  store_once(&t, sizeof(X) < sizeof(float) ? static_cast<double>(static_cast<float>(clip_max)) : clip_max);
  return static_cast<OpMath<X>>(to_op(t));
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
template <typename X, typename I>
struct FwdArgs {
  using T = OpMath<X>;
  int64_t n = 0;       // N*C*S (element launch)
  int64_t cs = 0;      // C*S, positions per sample (e_mean launch)
  int64_t chunks = 0;  // chunks per sample
  int64_t work = 0;    // N * chunks
  Layout<I> lay;
  const X* a = nullptr;
  const X* ah = nullptr;   // a_hat
  X* e = nullptr;          // (N, 2C, S)
  X* aho = nullptr;        // a_hat_out
  double* partial = nullptr;  // (N, chunks) sums of e
  Str<I> a_s, ah_s, e_s, aho_s;
  I pos_blk = 0;  // offset of e's relu(p - a) block
  I neg_blk = 0;  // offset of e's relu(a - p) block
  bool relu = true, clip = false;
  T cm = T(0);  // clip_max
};

// Writes e and a_hat_out at (b, ch, s); returns the sum of the two e values as stored.
template <typename X, typename I>
PK_HD OpMath<X> fwd_at(const FwdArgs<X, I>& a, I b, I ch, I s) {
  using T = OpMath<X>;
  const T av = load<T>(a.a + a.a_s.at(b, ch, s));
  T p = load<T>(a.ah + a.ah_s.at(b, ch, s));
  if (a.relu) p = relu(p);
  if (a.clip) p = clamp_max(p, a.cm);
  const T pos = relu(p - av);
  const T neg = relu(av - p);
  const I eo = a.e_s.at(b, ch, s);
  store(a.e + eo + a.pos_blk, pos);
  store(a.e + eo + a.neg_blk, neg);
  store(a.aho + a.aho_s.at(b, ch, s), p);
  return round_as<X>(pos) + round_as<X>(neg);
}

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) prednet_error_fwd_kernel(const FwdArgs<X, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n;
       k += step) {
    I b, ch, s;
    a.lay.decompose(static_cast<I>(k), b, ch, s);
    fwd_at<X, I>(a, b, ch, s);
  }
}

// One block per (n, chunk): the chunk's positions q = chunk * kPredNetErrorChunk + j * kThreads +
// threadIdx.x of the sample's (mid, fast) flat order; per-thread sums in j order, then a fixed tree.
template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) prednet_error_fwd_chunk_kernel(const FwdArgs<X, I> a) {
  using T = OpMath<X>;
  __shared__ T sh[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t w = blockIdx.x; w < a.work; w += gridDim.x) {
    const int64_t n = w / a.chunks;
    const int64_t base = (w - n * a.chunks) * kPredNetErrorChunk + tid;
    T sum = T(0);
    for (int j = 0; j < kPerThread; ++j) {
      const int64_t q = base + static_cast<int64_t>(j) * kThreads;
      if (q < a.cs) {
        I mid, fast;
        a.lay.fast.divmod(static_cast<I>(q), mid, fast);
        const I ch = a.lay.chan_fast ? fast : mid;
        const I s = a.lay.chan_fast ? mid : fast;
        sum += fwd_at<X, I>(a, static_cast<I>(n), ch, s);
      }
    }
    sh[tid] = sum;
    for (int h = kThreads / 2; h > 0; h >>= 1) {
      __syncthreads();
      if (tid < h) sh[tid] += sh[tid + h];
    }
    if (tid == 0) a.partial[w] = static_cast<double>(sh[0]);  // w == n * chunks + chunk
    __syncthreads();  // the next work item overwrites sh
  }
}

// One block per sample: thread t adds the chunk sums t, t + kThreads, ... in order, then a fixed
// tree; sum / (2 C S) stored once (NaN when C S == 0). (One thread per sample adding its chunks in
// turn took 13 us of the forward's 20 us at KITTI layer 1 on an H200: 240 chunks, one after another.)
template <typename X>
__global__ void __launch_bounds__(kThreads)
    prednet_error_mean_kernel(const double* partial, int64_t N, int64_t chunks, double count,
                              X* e_mean) {
  __shared__ double sh[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  for (int64_t n = blockIdx.x; n < N; n += gridDim.x) {
    double s = 0.0;
    for (int64_t j = tid; j < chunks; j += kThreads) s += partial[n * chunks + j];
    sh[tid] = s;
    for (int h = kThreads / 2; h > 0; h >>= 1) {
      __syncthreads();
      if (tid < h) sh[tid] += sh[tid + h];
    }
    if (tid == 0) store_once(e_mean + n, sh[0] / count);
    __syncthreads();  // the next sample overwrites sh
  }
}

template <typename X>
void launch_mean(const PredNetErrorForward& p, int64_t chunks, cudaStream_t stream) {
  const double count = 2.0 * static_cast<double>(p.C) * static_cast<double>(p.S);
  prednet_error_mean_kernel<X><<<blocks_for(p.N), kThreads, 0, stream>>>(
      p.partial, p.N, chunks, count, static_cast<X*>(p.e_mean));
  check_launch("prednet_error_forward_cuda");
}

template <typename X, typename I>
FwdArgs<X, I> make_fwd_args(const PredNetErrorForward& p) {
  FwdArgs<X, I> a;
  a.n = p.N * p.C * p.S;
  a.cs = p.C * p.S;
  a.chunks = prednet_error_chunks(p.C, p.S);
  a.work = p.N * a.chunks;
  a.lay = make_layout<I>(p.C, p.S, p.e);
  a.a = static_cast<const X*>(p.a.ptr);
  a.ah = static_cast<const X*>(p.a_hat.ptr);
  a.e = static_cast<X*>(p.e.ptr);
  a.aho = static_cast<X*>(p.a_hat_out.ptr);
  a.partial = p.partial;
  a.a_s = make_str<I>(p.a);
  a.ah_s = make_str<I>(p.a_hat);
  a.e_s = make_str<I>(p.e);
  a.aho_s = make_str<I>(p.a_hat_out);
  a.pos_blk = block_offset<I>(p.e, p.opt.target_first ? 1 : 0, p.C);
  a.neg_blk = block_offset<I>(p.e, p.opt.target_first ? 0 : 1, p.C);
  a.relu = p.opt.relu_a_hat;
  a.clip = p.opt.has_clip;
  if (a.clip) a.cm = clip_value<X>(p.opt.clip_max);
  return a;
}

template <typename X, typename I>
void launch_fwd_i(const PredNetErrorForward& p, cudaStream_t stream) {
  const FwdArgs<X, I> a = make_fwd_args<X, I>(p);
  if (p.e_mean == nullptr) {
    prednet_error_fwd_kernel<X, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
    check_launch("prednet_error_forward_cuda");
    return;
  }
  prednet_error_fwd_chunk_kernel<X, I><<<blocks_for(a.work), kThreads, 0, stream>>>(a);
  check_launch("prednet_error_forward_cuda");
  launch_mean<X>(p, a.chunks, stream);
}

inline bool fwd_fits_i32(const PredNetErrorForward& p) {
  const int64_t N = p.N, C = p.C, S = p.S;
  return fits_i32(stacked_numel(N, 2, C, S),
                  {reach(p.a, N, C, S), reach(p.a_hat, N, C, S), reach(p.e, N, 2 * C, S),
                   reach(p.a_hat_out, N, C, S)});
}

template <typename X>
void launch_fwd(const PredNetErrorForward& p, cudaStream_t stream) {
  if (fwd_fits_i32(p))
    launch_fwd_i<X, int32_t>(p, stream);
  else
    launch_fwd_i<X, int64_t>(p, stream);
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------
template <typename X, typename I>
struct BwdArgs {
  using T = OpMath<X>;
  int64_t n = 0;  // N*C*S
  Layout<I> lay;
  const X* ge = nullptr;    // optional grad_e (N, 2C, S)
  const X* gaho = nullptr;  // optional grad_a_hat_out
  const X* gem = nullptr;   // optional grad_e_mean (N,) contiguous
  const X* a = nullptr;
  const X* ah = nullptr;
  X* ga = nullptr;   // grad_a
  X* gah = nullptr;  // grad_a_hat
  Str<I> ge_s, gaho_s, a_s, ah_s, ga_s, gah_s;
  I pos_blk = 0;  // offset of grad_e's relu(p - a) block
  I neg_blk = 0;  // offset of grad_e's relu(a - p) block
  bool relu = true, clip = false;
  T cm = T(0);     // clip_max
  T count = T(1);  // 2 C S, the elements e_mean averages
};

template <typename X, typename I>
PK_HD void bwd_element(const BwdArgs<X, I>& a, I idx) {
  using T = OpMath<X>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  // Recompute the forward from the saved inputs.
  const T av = load<T>(a.a + a.a_s.at(b, ch, s));
  const T ahv = load<T>(a.ah + a.ah_s.at(b, ch, s));
  const T r = a.relu ? relu(ahv) : ahv;  // the clamp's input
  const T p = a.clip ? clamp_max(r, a.cm) : r;

  // Gradients reaching relu(p - a) and relu(a - p). An absent gradient is skipped, not read.
  T gpos = T(0), gneg = T(0);
  const bool have_e = a.ge != nullptr;
  if (have_e) {
    const I go = a.ge_s.at(b, ch, s);
    gpos = load<T>(a.ge + go + a.pos_blk);
    gneg = load<T>(a.ge + go + a.neg_blk);
  }
  if (a.gem != nullptr) {
    const T gm = load<T>(a.gem + b) / a.count;
    gpos = have_e ? gpos + gm : gm;
    gneg = have_e ? gneg + gm : gm;
  }
  // relu backward on its result: passes where the result is not <= 0 (NaN passes).
  const T d = p - av, nd = av - p;
  const T dpos = d <= T(0) ? T(0) : gpos;
  const T dneg = nd <= T(0) ? T(0) : gneg;

  T gp = a.gaho != nullptr ? load<T>(a.gaho + a.gaho_s.at(b, ch, s)) + dpos - dneg : dpos - dneg;
  const T gav = dneg - dpos;
  if (a.clip) gp = r <= a.cm ? gp : T(0);  // the clamp passes where its input <= clip_max
  if (a.relu) gp = r <= T(0) ? T(0) : gp;   // relu(a_hat) passes where its result is not <= 0

  store(a.ga + a.ga_s.at(b, ch, s), gav);
  store(a.gah + a.gah_s.at(b, ch, s), gp);
}

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) prednet_error_bwd_kernel(const BwdArgs<X, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    bwd_element<X, I>(a, static_cast<I>(k));
}

template <typename X, typename I>
BwdArgs<X, I> make_bwd_args(const PredNetErrorBackward& p) {
  using T = OpMath<X>;
  BwdArgs<X, I> a;
  a.n = p.N * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.grad_a);
  a.ge = static_cast<const X*>(p.grad_e.ptr);
  a.gaho = static_cast<const X*>(p.grad_a_hat_out.ptr);
  a.gem = static_cast<const X*>(p.grad_e_mean);
  a.a = static_cast<const X*>(p.a.ptr);
  a.ah = static_cast<const X*>(p.a_hat.ptr);
  a.ga = static_cast<X*>(p.grad_a.ptr);
  a.gah = static_cast<X*>(p.grad_a_hat.ptr);
  a.ge_s = make_str<I>(p.grad_e);
  a.gaho_s = make_str<I>(p.grad_a_hat_out);
  a.a_s = make_str<I>(p.a);
  a.ah_s = make_str<I>(p.a_hat);
  a.ga_s = make_str<I>(p.grad_a);
  a.gah_s = make_str<I>(p.grad_a_hat);
  a.pos_blk = block_offset<I>(p.grad_e, p.opt.target_first ? 1 : 0, p.C);
  a.neg_blk = block_offset<I>(p.grad_e, p.opt.target_first ? 0 : 1, p.C);
  a.relu = p.opt.relu_a_hat;
  a.clip = p.opt.has_clip;
  if (a.clip) a.cm = clip_value<X>(p.opt.clip_max);
  a.count = static_cast<T>(2.0 * static_cast<double>(p.C) * static_cast<double>(p.S));
  return a;
}

template <typename X, typename I>
void launch_bwd_i(const PredNetErrorBackward& p, cudaStream_t stream) {
  const BwdArgs<X, I> a = make_bwd_args<X, I>(p);
  prednet_error_bwd_kernel<X, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("prednet_error_backward_cuda");
}

inline bool bwd_fits_i32(const PredNetErrorBackward& p) {
  const int64_t N = p.N, C = p.C, S = p.S;
  return fits_i32(stacked_numel(N, 2, C, S),
                  {reach(p.grad_e, N, 2 * C, S), reach(p.grad_a_hat_out, N, C, S),
                   reach(p.a, N, C, S), reach(p.a_hat, N, C, S), reach(p.grad_a, N, C, S),
                   reach(p.grad_a_hat, N, C, S)});
}

template <typename X>
void launch_bwd(const PredNetErrorBackward& p, cudaStream_t stream) {
  if (bwd_fits_i32(p))
    launch_bwd_i<X, int32_t>(p, stream);
  else
    launch_bwd_i<X, int64_t>(p, stream);
}

}  // namespace prednet_error_cuda

void prednet_error_forward_cuda(const PredNetErrorForward& p, void* stream) {
  using namespace prednet_error_cuda;
  const char* who = "prednet_error_forward_cuda";
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (empty_or_bad(p.N, p.C, p.S, who)) {
    // No positions: e_mean of a non-empty batch is a mean over nothing, NaN.
    if (p.e_mean != nullptr && p.N > 0)
      dispatch_dtype(p.dtype, who, [&](auto x) { launch_mean<decltype(x)>(p, 0, st); });
    return;
  }
  require(p.a.ptr != nullptr && p.a_hat.ptr != nullptr && p.e.ptr != nullptr &&
              p.a_hat_out.ptr != nullptr,
          who, "a, a_hat, e and a_hat_out are required");
  require(p.e_mean == nullptr || p.partial != nullptr, who,
          "partial (workspace) is required with e_mean");
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_fwd<decltype(x)>(p, st); });
}

void prednet_error_backward_cuda(const PredNetErrorBackward& p, void* stream) {
  using namespace prednet_error_cuda;
  const char* who = "prednet_error_backward_cuda";
  if (empty_or_bad(p.N, p.C, p.S, who)) return;
  require(p.a.ptr != nullptr && p.a_hat.ptr != nullptr && p.grad_a.ptr != nullptr &&
              p.grad_a_hat.ptr != nullptr,
          who, "a, a_hat, grad_a and grad_a_hat are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_bwd<decltype(x)>(p, st); });
}

}  // namespace predkern
