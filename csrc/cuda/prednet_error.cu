// CUDA kernels for prednet_error, PredNet's error units (SPEC.md section 4):
//   p = min(relu(a_hat), clip_max) (each step optional),  a_hat_out = p,
//   e = [relu(p - a), relu(a - p)] (first == "pred") or the two blocks swapped (first == "target"),
//   e_mean[n] = sum of e[n] / (2 C S) (optional).
// Only CUDA runtime headers, so this compiles with a bare nvcc (DESIGN.md).
//
// Same scheme as stlstm_output.cu (helpers in common.cuh): one thread per (n, c, s) element, the
// flat index decomposed so that consecutive threads follow the smaller of the channel / space
// strides of the main output (e forward, grad_a backward); one launch per direction. Where every
// operand allows it (unit stride along that fast dim, its extent a multiple of kVec, aligned
// starts: vectorizes() in common.cuh), a thread takes kVec consecutive elements instead, one Vec
// load or store per operand (16 bytes in float32), as a clone() moves them: at KITTI layer 0 the
// one-element forward reached 75% of a clone's device bandwidth on an H200. With e_mean
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

static_assert(kPredNetErrorChunk == kThreads * kVec, "a chunk is kVec positions per thread");

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

// One element's error units from a's and a_hat's values: p (a_hat_out) and e's two values.
template <typename X, typename I>
PK_HD void units(const FwdArgs<X, I>& a, OpMath<X> av, OpMath<X> ahv, OpMath<X>& p, OpMath<X>& pos,
                 OpMath<X>& neg) {
  p = ahv;
  if (a.relu) p = relu(p);
  if (a.clip) p = clamp_max(p, a.cm);
  pos = relu(p - av);
  neg = relu(av - p);
}

// Writes e and a_hat_out at (b, ch, s); returns the sum of the two e values as stored.
template <typename X, typename I>
PK_HD OpMath<X> fwd_at(const FwdArgs<X, I>& a, I b, I ch, I s) {
  using T = OpMath<X>;
  T p, pos, neg;
  units(a, load<T>(a.a + a.a_s.at(b, ch, s)), load<T>(a.ah + a.ah_s.at(b, ch, s)), p, pos, neg);
  const I eo = a.e_s.at(b, ch, s);
  store(a.e + eo + a.pos_blk, pos);
  store(a.e + eo + a.neg_blk, neg);
  store(a.aho + a.aho_s.at(b, ch, s), p);
  return round_as<X>(pos) + round_as<X>(neg);
}

// fwd_at for the kVec elements from (b, ch, s) on along the fast dim, one Vec access per operand;
// returns the sum of their e values as stored, added in element order as the scalar path adds them.
template <typename X, typename I>
PK_HD OpMath<X> fwd_vec_at(const FwdArgs<X, I>& a, I b, I ch, I s) {
  using T = OpMath<X>;
  const Vec<X> av = load_vec(a.a + a.a_s.at(b, ch, s));
  const Vec<X> ahv = load_vec(a.ah + a.ah_s.at(b, ch, s));
  Vec<X> p_out, pos_out, neg_out;
  T sum = T(0);
  for (int k = 0; k < kVec; ++k) {
    T p, pos, neg;
    units(a, static_cast<T>(to_op(av.v[k])), static_cast<T>(to_op(ahv.v[k])), p, pos, neg);
    store(&p_out.v[k], p);
    store(&pos_out.v[k], pos);
    store(&neg_out.v[k], neg);
    sum += static_cast<T>(to_op(pos_out.v[k])) + static_cast<T>(to_op(neg_out.v[k]));
  }
  const I eo = a.e_s.at(b, ch, s);
  store_vec(a.e + eo + a.pos_blk, pos_out);
  store_vec(a.e + eo + a.neg_blk, neg_out);
  store_vec(a.aho + a.aho_s.at(b, ch, s), p_out);
  return sum;
}

// One thread per element, or with V per kVec elements along the fast dim.
template <typename X, typename I, bool V>
__global__ void __launch_bounds__(kThreads) prednet_error_fwd_kernel(const FwdArgs<X, I> a) {
  constexpr int64_t W = V ? kVec : 1;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n / W;
       k += step) {
    I b, ch, s;
    a.lay.decompose(static_cast<I>(k * W), b, ch, s);
    if constexpr (V)
      fwd_vec_at<X, I>(a, b, ch, s);
    else
      fwd_at<X, I>(a, b, ch, s);
  }
}

// One block per (n, chunk): thread t takes the chunk's positions q = chunk * kPredNetErrorChunk +
// t * kVec + k (k < kVec) of the sample's (mid, fast) flat order, with V as one Vec access per
// operand, and adds their e values in k order; then a fixed tree adds the threads' sums. Both paths
// add the same values in the same order, so e_mean has the same bits whichever path runs.
template <typename X, typename I, bool V>
__global__ void __launch_bounds__(kThreads) prednet_error_fwd_chunk_kernel(const FwdArgs<X, I> a) {
  using T = OpMath<X>;
  __shared__ T sh[kThreads];
  const int tid = static_cast<int>(threadIdx.x);
  const auto at = [&](int64_t q, I& ch, I& s) {  // a sample's flat position -> (ch, s)
    I mid, fast;
    a.lay.fast.divmod(static_cast<I>(q), mid, fast);
    ch = a.lay.chan_fast ? fast : mid;
    s = a.lay.chan_fast ? mid : fast;
  };
  for (int64_t w = blockIdx.x; w < a.work; w += gridDim.x) {
    const int64_t n = w / a.chunks;
    const int64_t first = (w - n * a.chunks) * kPredNetErrorChunk + static_cast<int64_t>(tid) * kVec;
    T sum = T(0);
    I ch, s;
    if constexpr (V) {
      if (first < a.cs) {  // then all kVec are: C*S is a multiple of kVec on this path
        at(first, ch, s);
        sum = fwd_vec_at<X, I>(a, static_cast<I>(n), ch, s);
      }
    } else {
      for (int k = 0; k < kVec; ++k) {
        if (first + k < a.cs) {
          at(first + k, ch, s);
          sum += fwd_at<X, I>(a, static_cast<I>(n), ch, s);
        }
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

// Whether every operand of the forward can be accessed a Vec at a time (vectorizes, common.cuh).
template <typename X, typename I>
bool fwd_vectorizes(const PredNetErrorForward& p, const FwdArgs<X, I>& a) {
  const bool cf = a.lay.chan_fast;
  const auto ok = [&](const View3& v, int64_t offset) {
    return vectorizes(v, cf, p.N, p.C, p.S, sizeof(X), offset);
  };
  return (cf ? p.C : p.S) % kVec == 0 && ok(p.a, 0) && ok(p.a_hat, 0) && ok(p.e, a.pos_blk) &&
         ok(p.e, a.neg_blk) && ok(p.a_hat_out, 0);
}

template <typename X, typename I, bool V>
void launch_fwd_v(const FwdArgs<X, I>& a, const PredNetErrorForward& p, cudaStream_t stream) {
  if (p.e_mean == nullptr) {
    prednet_error_fwd_kernel<X, I, V><<<grid_for(V ? a.n / kVec : a.n), kThreads, 0, stream>>>(a);
    check_launch("prednet_error_forward_cuda");
    return;
  }
  prednet_error_fwd_chunk_kernel<X, I, V><<<blocks_for(a.work), kThreads, 0, stream>>>(a);
  check_launch("prednet_error_forward_cuda");
  launch_mean<X>(p, a.chunks, stream);
}

template <typename X, typename I>
void launch_fwd_i(const PredNetErrorForward& p, cudaStream_t stream) {
  const FwdArgs<X, I> a = make_fwd_args<X, I>(p);
  if (fwd_vectorizes(p, a))
    launch_fwd_v<X, I, true>(a, p, stream);
  else
    launch_fwd_v<X, I, false>(a, p, stream);
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

// The gradients of a (gav) and a_hat (gp) at one element, from a's and a_hat's values and the
// gradients reaching e's relu(p - a) and relu(a - p) (gpos, gneg) and, where present, a_hat_out.
template <typename X, typename I>
PK_HD void grads_at(const BwdArgs<X, I>& a, OpMath<X> av, OpMath<X> ahv, OpMath<X> gpos,
                    OpMath<X> gneg, bool has_gaho, OpMath<X> gaho, OpMath<X>& gav, OpMath<X>& gp) {
  using T = OpMath<X>;
  // Recompute the forward from the saved inputs.
  const T r = a.relu ? relu(ahv) : ahv;  // the clamp's input
  const T p = a.clip ? clamp_max(r, a.cm) : r;
  // relu backward on its result: passes where the result is not <= 0 (NaN passes).
  const T d = p - av, nd = av - p;
  const T dpos = d <= T(0) ? T(0) : gpos;
  const T dneg = nd <= T(0) ? T(0) : gneg;

  gp = has_gaho ? gaho + dpos - dneg : dpos - dneg;
  gav = dneg - dpos;
  if (a.clip) gp = r <= a.cm ? gp : T(0);  // the clamp passes where its input <= clip_max
  if (a.relu) gp = r <= T(0) ? T(0) : gp;   // relu(a_hat) passes where its result is not <= 0
}

// The gradients reaching e's two values from grad_e (where given) and grad_e_mean (gm, where
// has_gm). An absent gradient is skipped, not read.
template <typename T>
PK_HD void e_grads(bool has_e, T ge_pos, T ge_neg, bool has_gm, T gm, T& gpos, T& gneg) {
  gpos = has_e ? ge_pos : T(0);
  gneg = has_e ? ge_neg : T(0);
  if (has_gm) {
    gpos = has_e ? gpos + gm : gm;
    gneg = has_e ? gneg + gm : gm;
  }
}

template <typename X, typename I>
PK_HD void bwd_at(const BwdArgs<X, I>& a, I b, I ch, I s) {
  using T = OpMath<X>;
  const bool has_e = a.ge != nullptr, has_gm = a.gem != nullptr, has_gaho = a.gaho != nullptr;
  const I go = has_e ? a.ge_s.at(b, ch, s) : I(0);
  T gpos, gneg, gav, gp;
  e_grads<T>(has_e, has_e ? load<T>(a.ge + go + a.pos_blk) : T(0),
             has_e ? load<T>(a.ge + go + a.neg_blk) : T(0), has_gm,
             has_gm ? load<T>(a.gem + b) / a.count : T(0), gpos, gneg);
  grads_at(a, load<T>(a.a + a.a_s.at(b, ch, s)), load<T>(a.ah + a.ah_s.at(b, ch, s)), gpos, gneg,
           has_gaho, has_gaho ? load<T>(a.gaho + a.gaho_s.at(b, ch, s)) : T(0), gav, gp);
  store(a.ga + a.ga_s.at(b, ch, s), gav);
  store(a.gah + a.gah_s.at(b, ch, s), gp);
}

// bwd_at for the kVec elements from (b, ch, s) on along the fast dim, one Vec access per operand.
template <typename X, typename I>
PK_HD void bwd_vec_at(const BwdArgs<X, I>& a, I b, I ch, I s) {
  using T = OpMath<X>;
  const bool has_e = a.ge != nullptr, has_gm = a.gem != nullptr, has_gaho = a.gaho != nullptr;
  const I go = has_e ? a.ge_s.at(b, ch, s) : I(0);
  Vec<X> ge_pos{}, ge_neg{}, gaho{};
  if (has_e) {
    ge_pos = load_vec(a.ge + go + a.pos_blk);
    ge_neg = load_vec(a.ge + go + a.neg_blk);
  }
  if (has_gaho) gaho = load_vec(a.gaho + a.gaho_s.at(b, ch, s));
  const T gm = has_gm ? load<T>(a.gem + b) / a.count : T(0);
  const Vec<X> av = load_vec(a.a + a.a_s.at(b, ch, s));
  const Vec<X> ahv = load_vec(a.ah + a.ah_s.at(b, ch, s));
  Vec<X> ga_out, gah_out;
  for (int k = 0; k < kVec; ++k) {
    T gpos, gneg, gav, gp;
    e_grads<T>(has_e, static_cast<T>(to_op(ge_pos.v[k])), static_cast<T>(to_op(ge_neg.v[k])), has_gm,
               gm, gpos, gneg);
    grads_at(a, static_cast<T>(to_op(av.v[k])), static_cast<T>(to_op(ahv.v[k])), gpos, gneg, has_gaho,
             static_cast<T>(to_op(gaho.v[k])), gav, gp);
    store(&ga_out.v[k], gav);
    store(&gah_out.v[k], gp);
  }
  store_vec(a.ga + a.ga_s.at(b, ch, s), ga_out);
  store_vec(a.gah + a.gah_s.at(b, ch, s), gah_out);
}

// One thread per element, or with V per kVec elements along the fast dim.
template <typename X, typename I, bool V>
__global__ void __launch_bounds__(kThreads) prednet_error_bwd_kernel(const BwdArgs<X, I> a) {
  constexpr int64_t W = V ? kVec : 1;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n / W;
       k += step) {
    I b, ch, s;
    a.lay.decompose(static_cast<I>(k * W), b, ch, s);
    if constexpr (V)
      bwd_vec_at<X, I>(a, b, ch, s);
    else
      bwd_at<X, I>(a, b, ch, s);
  }
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

// Whether every operand of the backward can be accessed a Vec at a time (vectorizes, common.cuh).
template <typename X, typename I>
bool bwd_vectorizes(const PredNetErrorBackward& p, const BwdArgs<X, I>& a) {
  const bool cf = a.lay.chan_fast;
  const auto ok = [&](const View3& v, int64_t offset) {
    return vectorizes(v, cf, p.N, p.C, p.S, sizeof(X), offset);
  };
  return (cf ? p.C : p.S) % kVec == 0 && ok(p.grad_e, a.pos_blk) && ok(p.grad_e, a.neg_blk) &&
         ok(p.grad_a_hat_out, 0) && ok(p.a, 0) && ok(p.a_hat, 0) && ok(p.grad_a, 0) &&
         ok(p.grad_a_hat, 0);
}

template <typename X, typename I>
void launch_bwd_i(const PredNetErrorBackward& p, cudaStream_t stream) {
  const BwdArgs<X, I> a = make_bwd_args<X, I>(p);
  if (bwd_vectorizes(p, a))
    prednet_error_bwd_kernel<X, I, true><<<grid_for(a.n / kVec), kThreads, 0, stream>>>(a);
  else
    prednet_error_bwd_kernel<X, I, false><<<grid_for(a.n), kThreads, 0, stream>>>(a);
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
