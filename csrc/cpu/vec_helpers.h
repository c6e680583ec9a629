// SIMD building blocks shared by the CPU kernels (csrc/cpu/<op>.cpp). Included after
// CPU_CAPABILITY is set (capability.h), so each instruction-set variant gets its own copy.
#pragma once
#include "cpu/capability.h"
#include "convlstm_gates.h"

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <type_traits>
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#include <immintrin.h>
#endif

namespace predkern::cpu {
namespace CPU_CAPABILITY {

using at::vec::Vectorized;

// The per-vector helpers below are forced inline: GCC kept out-of-line copies of load, store,
// sigmoid and tanh inside the larger kernels, a call per vector with the operands spilled.
#if defined(__GNUC__)
#define PREDKERN_VEC_INLINE inline __attribute__((always_inline))
#else
#define PREDKERN_VEC_INLINE inline
#endif

template <typename T> struct OpMathOf { using type = float; };
template <> struct OpMathOf<double> { using type = double; };

// One operand along the loop's inner dimension: `inc` elements apart (1, 0 or anything else).
template <typename T>
struct Run {
  T* p = nullptr;
  int64_t inc = 0;
  int64_t ahead = 0;  // elements from p to the same place kAheadRows rows on (0: not prefetched)
  bool stream = false;  // an output stored past the caches (see streams)
};

// Whether a kernel call stores its outputs past the caches (non-temporal stores), given n, the
// elements of one (B, C, *spatial) block, and the bytes per element of all it writes and of its
// largest output. A plain store of a line not in cache first reads it from memory, which a call
// writing more than the caches hold pays on every line: on an EPYC (2 cores, 1 MiB L2 each,
// 32 MiB L3) zeroing 64 MiB ran at 23.5 GB/s plain and 81.5 streamed, a copy at 27.5 and 42
// (read + write); stlstm_memory + stlstm_output forward+backward at B=16, C=128, 16x16 1.15x
// (NCHW) and 1.3x (channels_last) faster. Calls writing less keep their outputs cached for the
// next op. Outputs of 32 MiB and more are stored plainly: glibc maps an allocation that large
// afresh each time (its mmap threshold stops at 32 MiB), and the page faults leave each page
// cached, zeroed by the kernel (convlstm_gates forward+backward at 64x64: 5% slower streamed).
constexpr int64_t kStreamMinBytes = int64_t(4) << 20;
constexpr int64_t kFreshMapBytes = int64_t(32) << 20;
inline bool streams(int64_t n, int64_t written, int64_t largest) {
  return n * written >= kStreamMinBytes && n * largest < kFreshMapBytes;
}

// One full vector stored non-temporally where the instruction set has it and p is aligned to
// the vector; false (nothing stored) otherwise.
template <typename T>
PREDKERN_VEC_INLINE bool store_streamed(T* p, const Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if (reinterpret_cast<std::uintptr_t>(p) % 64) return false;
  if constexpr (std::is_same_v<T, float>) return _mm512_stream_ps(p, v), true;
  if constexpr (std::is_same_v<T, double>) return _mm512_stream_pd(p, v), true;
#elif defined(CPU_CAPABILITY_AVX2)
  if (reinterpret_cast<std::uintptr_t>(p) % 32) return false;
  if constexpr (std::is_same_v<T, float>) return _mm256_stream_ps(p, v), true;
  if constexpr (std::is_same_v<T, double>) return _mm256_stream_pd(p, v), true;
#endif
  return false;
}

// Orders a thread's non-temporal stores before what follows it (the end of a parallel region).
inline void stream_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// Where channels are the inner dimension (channels_last), a row is one position's few hundred
// channels and the next row lies a whole position further: the hardware prefetchers miss that
// pattern, so every run is prefetched (loads and stores) four rows ahead. On an EPYC at
// B=16, C=128, 16x16: stlstm_memory 3.7 -> 2.1 ms forward, 3.2 -> 2.0 ms backward;
// convlstm_gates 2.0 -> 1.2 ms forward; stlstm_output 2.0 -> 1.0 ms backward. Rows along space
// are long unit-stride streams, which the hardware prefetches well.
constexpr int64_t kAheadRows = 4;

// The run of element (b, ch_offset + ch, s) for a row: `outer` is ch when space is the inner
// dimension, s otherwise. `b` is the batch index (or the peephole block, through sb).
template <typename T>
Run<T> run_of(const View3& v, int64_t b, int64_t outer, int64_t ch_offset, bool space_inner,
              bool stream = false) {
  T* base = static_cast<T*>(v.ptr) + b * v.sb;
  if (space_inner) return {base + (ch_offset + outer) * v.sc, v.ss, 0, stream};
  return {base + ch_offset * v.sc + outer * v.ss, v.sc, kAheadRows * v.ss, stream};
}

// One full float vector from / to 16 consecutive float16 or bfloat16 values (8 with AVX2), bit for
// bit as c10's scalar conversions: bfloat16 rounds to nearest even with a NaN stored as 0x7FC0,
// float16 by the F16C instruction's nearest even. GCC left load's and store's element loop scalar
// for these types: the fused ops ran 2-2.5x slower with bfloat16 gates than with float32 ones at
// PredRNN-V2's training sizes.
template <typename S> struct Packed16 : std::false_type {};
#if defined(CPU_CAPABILITY_AVX512)
template <> struct Packed16<c10::BFloat16> : std::true_type {
  static PREDKERN_VEC_INLINE __m512 load(const void* p) {
    const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
  }
  static PREDKERN_VEC_INLINE void store(void* p, __m512 x) {
    const __m512i v = _mm512_castps_si512(x);
    const __m512i bias = _mm512_add_epi32(_mm512_and_si512(_mm512_srli_epi32(v, 16), _mm512_set1_epi32(1)),
                                          _mm512_set1_epi32(0x7FFF));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(v, bias), 16);
    r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(x, x, _CMP_ORD_Q), _mm512_set1_epi32(0x7FC0), r);
    _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
  }
};
template <> struct Packed16<c10::Half> : std::true_type {
  static PREDKERN_VEC_INLINE __m512 load(const void* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(static_cast<const __m256i*>(p)));
  }
  static PREDKERN_VEC_INLINE void store(void* p, __m512 x) {
    _mm256_storeu_si256(static_cast<__m256i*>(p), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
#elif defined(CPU_CAPABILITY_AVX2)
template <> struct Packed16<c10::BFloat16> : std::true_type {
  static PREDKERN_VEC_INLINE __m256 load(const void* p) {
    const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(static_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
  }
  static PREDKERN_VEC_INLINE void store(void* p, __m256 x) {
    const __m256i v = _mm256_castps_si256(x);
    const __m256i bias = _mm256_add_epi32(_mm256_and_si256(_mm256_srli_epi32(v, 16), _mm256_set1_epi32(1)),
                                          _mm256_set1_epi32(0x7FFF));
    __m256i r = _mm256_srli_epi32(_mm256_add_epi32(v, bias), 16);
    const __m256i ordered = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_ORD_Q));
    r = _mm256_blendv_epi8(_mm256_set1_epi32(0x7FC0), r, ordered);
    // 32-bit lanes (each < 2^16) to 16-bit: packus interleaves the two 128-bit halves
    r = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0xD8);
    _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_castsi256_si128(r));
  }
};
template <> struct Packed16<c10::Half> : std::true_type {
  static PREDKERN_VEC_INLINE __m256 load(const void* p) {
    return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p)));
  }
  static PREDKERN_VEC_INLINE void store(void* p, __m256 x) {
    _mm_storeu_si128(static_cast<__m128i*>(p), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
};
#endif

// Loads n <= size() lanes starting at inner index j, converted to the math type T.
template <typename T, typename S>
PREDKERN_VEC_INLINE Vectorized<T> load(const Run<S>& r, int64_t j, int64_t n) {
  using Src = std::remove_const_t<S>;
  if (r.ahead) __builtin_prefetch(r.p + j * r.inc + r.ahead);
  if constexpr (std::is_same_v<T, Src>) {
    if (r.inc == 1) return Vectorized<T>::loadu(r.p + j, n);
  }
  if (r.inc == 0) return Vectorized<T>(static_cast<T>(r.p[0]));
  constexpr int64_t V = Vectorized<T>::size();
  if constexpr (std::is_same_v<T, float> && Packed16<Src>::value) {
    if (r.inc == 1 && n == V) return Packed16<Src>::load(r.p + j);
  }
  alignas(64) T buf[V];
  if (r.inc == 1 && n == V) {  // a fixed trip count: the compiler vectorizes the conversion
    for (int64_t k = 0; k < V; ++k) buf[k] = static_cast<T>(r.p[j + k]);
    return Vectorized<T>::loadu(buf);
  }
  for (int64_t k = 0; k < n; ++k) buf[k] = static_cast<T>(r.p[(j + k) * r.inc]);
  return Vectorized<T>::loadu(buf, n);
}

// Stores n lanes at inner index j, rounding once to the storage type S.
template <typename T, typename S>
PREDKERN_VEC_INLINE void store(const Run<S>& r, int64_t j, int64_t n, const Vectorized<T>& v) {
  constexpr int64_t V = Vectorized<T>::size();
  if (r.ahead && !r.stream) __builtin_prefetch(r.p + j * r.inc + r.ahead, /*for writing=*/1);
  if constexpr (std::is_same_v<T, S>) {
    if (r.inc == 1) {
      if (!(r.stream && n == V && store_streamed(r.p + j, v))) v.store(r.p + j, n);
      return;
    }
  }
  if constexpr (std::is_same_v<T, float> && Packed16<S>::value) {
    if (r.inc == 1 && n == V) return Packed16<S>::store(r.p + j, v);
  }
  alignas(64) T buf[V];
  v.store(buf);
  if (r.inc == 1 && n == V) {  // as in load
    for (int64_t k = 0; k < V; ++k) r.p[j + k] = static_cast<S>(buf[k]);
    return;
  }
  for (int64_t k = 0; k < n; ++k) r.p[(j + k) * r.inc] = static_cast<S>(buf[k]);
}

// e^x for sigmoid and tanh below, which use it only in 1 / (1 + e^x).
// Float under AVX512: exp_u20's polynomial on a reduction with ln 2 in two parts, scaled by
// vscalefps: 12 instructions instead of ~20, and over every float x whose e^x is a normal float,
// at most 2 ulp off (mean 0.04) where exp_u20 is off by 140 ulp on average (millions near
// x = -87). x is clamped to [-87.3, 89] (NaN kept: min and max return their second operand where
// one is NaN): below, e^x is not a normal float, and a denormal result costs a microcode assist
// (3.4x slower) and changes nothing in 1 + e^x; above, the result is inf.
// Otherwise ATen's polynomial exp (~2x faster than Sleef's), with NaN put back, which it loses.
template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> exp(const Vectorized<T>& x) {
#ifdef CPU_CAPABILITY_AVX512
  if constexpr (std::is_same_v<T, float>) {
    const auto set = [](float v) { return _mm512_set1_ps(v); };
    __m512 clamped = _mm512_max_ps(set(-87.33654f), _mm512_min_ps(set(89.f), x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(clamped, set(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    // r = x - n ln 2, ln 2 = 0.693145751953125 (exact in float, n times it too) + 1.4286068e-06
    __m512 r = _mm512_fnmadd_ps(n, set(0.693145751953125f), clamped);
    r = _mm512_fnmadd_ps(n, set(1.428606765330187045e-06f), r);
    __m512 p = _mm512_fmadd_ps(r, set(0.00828929059f), set(0.0418978221f));
    p = _mm512_fmadd_ps(r, p, set(0.166676521f));
    p = _mm512_fmadd_ps(r, p, set(0.499991506f));
    p = _mm512_fmadd_ps(r, p, set(0.999999701f));
    p = _mm512_fmadd_ps(r, p, set(1.f));
    return _mm512_scalef_ps(p, n);
  }
#endif
  return Vectorized<T>::blendv(x.exp_u20(), x, x != x);
}

template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1));
  return one / (one + exp(x.neg()));
}

// tanh(x) = 2 sigmoid(2x) - 1: one exp and one division, ~3x faster than Sleef's tanh here, with
// an absolute error of a few ulp of 1 (SPEC.md bounds the error relative to the output's scale).
// +-inf give +-1 and NaN stays NaN.
template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> tanh(const Vectorized<T>& x) {
  const Vectorized<T> one(T(1)), two(T(2));
  return two / (one + exp(x * Vectorized<T>(T(-2)))) - one;
}

// clamp(0.2 x + 0.5, 0, 1) with blends, so NaN passes through as in torch.clamp.
template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> hard_sigmoid(const Vectorized<T>& x) {
  const Vectorized<T> zero(T(0)), one(T(1));
  const auto t = x * Vectorized<T>(T(0.2)) + Vectorized<T>(T(0.5));
  const auto lo = Vectorized<T>::blendv(t, zero, t < zero);
  return Vectorized<T>::blendv(lo, one, lo > one);
}

template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> act(const Vectorized<T>& x, bool hard) {
  return hard ? hard_sigmoid(x) : sigmoid(x);
}

// The closed interval of x where the float64 reference's clamp(0.2 x + 0.5, 0, 1) passes the
// gradient (torch.clamp's backward is inclusive): [-2.5, 2.5] for float32 and half inputs, one
// more ulp above for float64 (0.2 x rounds to 0.5 there). Comparing x itself, not a recomputed
// 0.2 x + 0.5, keeps the kinks in place whatever the compiler contracts into a fused multiply-add
// (which put x = -2.5 outside).
template <typename T> inline constexpr T kHardSigmoidHi = T(2.5);
template <> inline constexpr double kHardSigmoidHi<double> = 2.5000000000000004;

// grad * d sigmoid(x) / dx given y = sigmoid(x), associated as eager's sigmoid_backward.
template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> sigmoid_backward(const Vectorized<T>& grad, const Vectorized<T>& y) {
  return grad * (Vectorized<T>(T(1)) - y) * y;
}

// grad * d act / dx, given x and y = act(x). hard_sigmoid's is 0.2 grad on the interval above,
// selected (not multiplied by a 0/1 mask) so that an infinite grad outside it gives 0 as in
// eager, not NaN.
template <typename T>
PREDKERN_VEC_INLINE Vectorized<T> act_backward(const Vectorized<T>& grad, const Vectorized<T>& x,
                                  const Vectorized<T>& y, bool hard) {
  const Vectorized<T> zero(T(0));
  if (!hard) return sigmoid_backward(grad, y);
  const auto inside = (x >= Vectorized<T>(T(-2.5))) & (x <= Vectorized<T>(kHardSigmoidHi<T>));
  return Vectorized<T>::blendv(zero, grad * Vectorized<T>(T(0.2)), inside);
}

struct RowSpace {
  bool space_inner;  // inner dimension: space (NCHW-like output) or channels (channels_last)
  int64_t rows, inner, grain;
};

inline RowSpace row_space(int64_t B, int64_t C, int64_t S, const View3& out) {
  RowSpace r;
  r.space_inner = out.ss == 1 && S > 1;
  r.inner = r.space_inner ? S : C;
  r.rows = B * (r.space_inner ? C : S);
  r.grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(r.inner, 1));
  return r;
}

// Runs pass(k, row) for k in [0, passes) over rows [begin, end), split across threads. Where space
// is the inner dimension, each tile of rows (about 16K elements, still cached) gets one pass after
// the other: a kernel that splits its work into passes over a few channel blocks each keeps a dozen
// streams open rather than two dozen, all 4 KiB-aliased (blocks lie C*S elements apart);
// stlstm_memory ran 1.2-1.3x faster each way that way on an EPYC at B=16, C=128, 16x16. Where
// channels are inner (channels_last), a row's blocks are adjacent and the passes run row by row
// (1.15-1.25x faster there than pass by pass).
template <typename Pass>
inline void parallel_passes(const RowSpace& rs, int passes, const Pass& pass) {
  at::parallel_for(0, rs.rows, rs.grain, [&](int64_t begin, int64_t end) {
    for (int64_t t0 = begin; t0 < end; t0 += rs.grain) {  // a tile: the grain's ~16K elements
      const int64_t t1 = std::min(end, t0 + rs.grain);
      if (rs.space_inner) {
        for (int k = 0; k < passes; ++k)
          for (int64_t row = t0; row < t1; ++row) pass(k, row);
      } else {
        for (int64_t row = t0; row < t1; ++row)
          for (int k = 0; k < passes; ++k) pass(k, row);
      }
    }
    stream_fence();
  });
}

// Runs Kernel<G, S> for the (gate, state) dtype pair; SPEC.md section 5 allows equal dtypes and
// the autocast mix (float16 / bfloat16 gates with float32 state).
template <template <typename, typename> class Kernel, typename Params>
inline void dispatch_dtypes(DType gate, DType state, const Params& p) {
  using c10::BFloat16;
  using c10::Half;
  if (gate == state) {
    switch (gate) {
      case DType::Float32: return Kernel<float, float>::run(p);
      case DType::Float64: return Kernel<double, double>::run(p);
      case DType::Float16: return Kernel<Half, Half>::run(p);
      case DType::BFloat16: return Kernel<BFloat16, BFloat16>::run(p);
    }
  } else if (state == DType::Float32) {
    if (gate == DType::Float16) return Kernel<Half, float>::run(p);
    if (gate == DType::BFloat16) return Kernel<BFloat16, float>::run(p);
  }
  throw std::invalid_argument("predkern: unsupported (gate, state) dtype pair");
}

}  // namespace CPU_CAPABILITY
}  // namespace predkern::cpu
