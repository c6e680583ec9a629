// Device and launcher helpers shared by the pointwise CUDA kernels in csrc/cuda/*.cu.
// Header-only: every function is inline or a template, so any number of .cu files may include it.
// Only CUDA runtime headers, so the kernels compile with a bare nvcc (DESIGN.md).
//
// Conventions of the kernels built on it:
// - One thread per (b, ch, s) element of the (B, C, S) problem (or per kVec of them along the fast
//   dim where the kernel has a vector path, see Vec), grid-stride loop, one launch per forward and
//   per backward, nothing launched when B*C*S == 0.
// - The flat index is decomposed as (b, mid, fast), `fast` being whichever of channel / space has
//   the smaller stride in the kernel's main output (Layout), so consecutive threads touch
//   consecutive addresses for NCHW and channels_last alike.
// - Index type I: int32 when every reachable offset fits (fits_i32), else int64.
// - Math in OpMath (float for float/half/bfloat16, double for double): loads convert, each store
//   rounds once. Activations propagate NaN (no fmin/fmax).
#pragma once

#include "convlstm_gates.h"  // DType, View3

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#ifndef PK_HD
#if defined(__CUDACC__)
#define PK_HD __host__ __device__ __forceinline__
#else
#define PK_HD inline
#endif
#endif

namespace predkern {
namespace cuda_detail {

constexpr int kThreads = 256;

// ---------------------------------------------------------------------------------------------
// Scalar helpers: opmath type, load-convert, round-once store, activations.
// ---------------------------------------------------------------------------------------------
template <typename G>
using OpMath = typename std::conditional<std::is_same<G, double>::value, double, float>::type;

PK_HD float to_op(float x) { return x; }
PK_HD double to_op(double x) { return x; }
PK_HD float to_op(__half x) { return __half2float(x); }
PK_HD float to_op(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T, typename X>
PK_HD T load(const X* p) {
#if defined(__CUDA_ARCH__)
  return static_cast<T>(to_op(__ldg(p)));  // inputs are read-only for the kernel's lifetime
#else
  return static_cast<T>(to_op(*p));
#endif
}

template <typename X> struct Store;
template <> struct Store<float> {
  PK_HD static void put(float* p, float v) { *p = v; }
};
template <> struct Store<double> {
  PK_HD static void put(double* p, double v) { *p = v; }
};
template <> struct Store<__half> {
  PK_HD static void put(__half* p, float v) { *p = __float2half_rn(v); }
};
template <> struct Store<__nv_bfloat16> {
  PK_HD static void put(__nv_bfloat16* p, float v) { *p = __float2bfloat16_rn(v); }
};

template <typename X, typename T>
PK_HD void store(X* p, T v) { Store<X>::put(p, v); }

// A double rounded once into X (store() goes through float for the half types).
PK_HD void store_once(float* p, double v) { *p = static_cast<float>(v); }
PK_HD void store_once(double* p, double v) { *p = v; }
PK_HD void store_once(__half* p, double v) { *p = __double2half(v); }
PK_HD void store_once(__nv_bfloat16* p, double v) { *p = __double2bfloat16(v); }

PK_HD float op_exp(float x) { return expf(x); }
PK_HD double op_exp(double x) { return exp(x); }
PK_HD float op_tanh(float x) { return tanhf(x); }
PK_HD double op_tanh(double x) { return tanh(x); }

// 1 / (1 + exp(-z)): 0 and 1 at the infinities, NaN in, NaN out.
template <typename T>
PK_HD T sigmoid(T z) { return T(1) / (T(1) + op_exp(-z)); }

// grad * d sigmoid(z) / dz given y = sigmoid(z), associated as eager's sigmoid_backward (and the
// CPU kernels'), so the backends differ by no more than their exp.
template <typename T>
PK_HD T sigmoid_backward(T grad, T y) { return grad * (T(1) - y) * y; }

// a * b rounded before any add that follows: nvcc would fuse `z + a * b` into one fma, where
// eager rounds the product first (it matters next to hard_sigmoid's kinks).
template <typename T>
PK_HD T mul_rn(T a, T b) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == sizeof(float)) return __fmul_rn(a, b);
  else return __dmul_rn(a, b);
#else
  volatile T m = a * b;  // the host emulation: a store rounds the product
  return m;
#endif
}

// ---------------------------------------------------------------------------------------------
// Index helpers.
// ---------------------------------------------------------------------------------------------
// n -> (n / d, n % d). The int32 flavour uses a multiply-high by a magic number (PyTorch's
// IntDivider); valid for 0 <= n < 2^31 and 1 <= d < 2^31.
template <typename I> struct DivMod;

template <> struct DivMod<int32_t> {
  uint32_t d = 1, m = 1, sh = 0;
  DivMod() = default;
  explicit DivMod(int64_t div) : d(static_cast<uint32_t>(div)) {
    for (sh = 0; sh < 32; ++sh)
      if ((uint64_t{1} << sh) >= d) break;
    const uint64_t magic = ((uint64_t{1} << 32) * ((uint64_t{1} << sh) - d)) / d + 1;
    m = static_cast<uint32_t>(magic);
  }
  PK_HD void divmod(int32_t n, int32_t& q, int32_t& r) const {
    const uint32_t un = static_cast<uint32_t>(n);
#if defined(__CUDA_ARCH__)
    const uint32_t t = __umulhi(un, m);
#else
    const uint32_t t = static_cast<uint32_t>((static_cast<uint64_t>(un) * m) >> 32);
#endif
    const uint32_t uq = (t + un) >> sh;
    q = static_cast<int32_t>(uq);
    r = static_cast<int32_t>(un - uq * d);
  }
};

template <> struct DivMod<int64_t> {
  int64_t d = 1;
  DivMod() = default;
  explicit DivMod(int64_t div) : d(div) {}
  PK_HD void divmod(int64_t n, int64_t& q, int64_t& r) const {
    q = n / d;
    r = n - q * d;
  }
};

// Strides of a View3 in the kernel's index type.
template <typename I>
struct Str {
  I sb = 0, sc = 0, ss = 0;
  PK_HD I at(I b, I ch, I s) const { return b * sb + ch * sc + s * ss; }
};

template <typename I>
Str<I> make_str(const View3& v) {
  Str<I> r;
  r.sb = static_cast<I>(v.sb);
  r.sc = static_cast<I>(v.sc);
  r.ss = static_cast<I>(v.ss);
  return r;
}

// Offset of channel block j (channels [j*C, (j+1)*C)) of a channel-stacked view.
template <typename I>
I block_offset(const View3& v, int64_t j, int64_t C) {
  return static_cast<I>(j * C * v.sc);
}

// The flat-index decomposition shared by the kernels.
template <typename I>
struct Layout {
  DivMod<I> fast, mid;  // sizes of the fastest and the middle dims
  bool chan_fast = false;
  PK_HD void decompose(I idx, I& b, I& ch, I& s) const {
    I q, r0, r1;
    fast.divmod(idx, q, r0);
    mid.divmod(q, b, r1);
    ch = chan_fast ? r0 : r1;
    s = chan_fast ? r1 : r0;
  }
};

// Channels vary fastest when their stride in the output is the smaller one (channels_last), or
// when there is a single spatial position (plain LSTM); else space varies fastest (NCHW).
inline bool channels_fast(int64_t C, int64_t S, const View3& out) {
  if (S == 1) return true;
  if (C == 1) return false;
  return std::llabs(static_cast<long long>(out.sc)) < std::llabs(static_cast<long long>(out.ss));
}

template <typename I>
Layout<I> make_layout(int64_t C, int64_t S, const View3& out) {
  const bool chan_fast = channels_fast(C, S, out);
  Layout<I> l;
  l.chan_fast = chan_fast;
  l.fast = DivMod<I>(chan_fast ? C : S);
  l.mid = DivMod<I>(chan_fast ? S : C);
  return l;
}

// Largest |offset| reachable in a view of the given sizes (double: no overflow on silly strides).
inline double reach(const View3& v, int64_t nb, int64_t nc, int64_t ns) {
  if (v.ptr == nullptr) return 0.0;
  auto term = [](int64_t n, int64_t st) {
    return n > 1 ? static_cast<double>(n - 1) * std::fabs(static_cast<double>(st)) : 0.0;
  };
  return term(nb, v.sb) + term(nc, v.sc) + term(ns, v.ss);
}

constexpr double kI32Max = static_cast<double>(std::numeric_limits<int32_t>::max());

// B * k * C * S in double (no overflow): the element count of the widest (B, kC, S) view.
inline double stacked_numel(int64_t B, int64_t k, int64_t C, int64_t S) {
  return static_cast<double>(B) * static_cast<double>(k) * static_cast<double>(C) *
         static_cast<double>(S);
}

// int32 indexing is safe when the widest view's element count and every reachable offset fit.
inline bool fits_i32(double widest_numel, std::initializer_list<double> reaches) {
#ifdef PREDKERN_CUDA_INDEX64_ONLY  // tests/cuda_emulation: the 64-bit path on small tensors
  return false;
#endif
  if (widest_numel > kI32Max) return false;
  for (double x : reaches)
    if (x > kI32Max) return false;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Vector access: kVec consecutive elements along the fast dim in one load or store (16 bytes in
// float32), as PyTorch's elementwise kernels and a clone() move them; kernels take this path where
// every operand allows it (vectorizes) and the scalar path elsewhere.
// ---------------------------------------------------------------------------------------------
constexpr int kVec = 4;

template <typename X>
struct alignas(kVec * sizeof(X)) Vec {
  X v[kVec];
};

template <typename X>
PK_HD Vec<X> load_vec(const X* p) { return *reinterpret_cast<const Vec<X>*>(p); }

template <typename X>
PK_HD void store_vec(X* p, const Vec<X>& v) { *reinterpret_cast<Vec<X>*>(p) = v; }

// Whether view v of (nb, nc, ns) elements of `elem` bytes, shifted by `offset` elements (a
// channel block's), can be accessed a Vec at a time from every element whose fast index (channel
// if chan_fast, else position) is a multiple of kVec: unit stride along the fast dim, the other
// strides (of dims longer than 1) multiples of kVec, and the start aligned to a Vec. The caller
// checks that the fast extent is a multiple of kVec. An absent view does not object.
inline bool vectorizes(const View3& v, bool chan_fast, int64_t nb, int64_t nc, int64_t ns,
                       std::size_t elem, int64_t offset = 0) {
  if (v.ptr == nullptr) return true;
  const auto whole = [](int64_t n, int64_t stride) { return n <= 1 || stride % kVec == 0; };
  const bool fast_unit = chan_fast ? v.sc == 1 : v.ss == 1;
  const bool others = chan_fast ? whole(ns, v.ss) : whole(nc, v.sc);
  const auto start = reinterpret_cast<std::uintptr_t>(static_cast<const char*>(v.ptr)) +
                     static_cast<std::uintptr_t>(offset) * elem;
  return fast_unit && others && whole(nb, v.sb) && offset % kVec == 0 && start % (kVec * elem) == 0;
}

// ---------------------------------------------------------------------------------------------
// Launch helpers.
// ---------------------------------------------------------------------------------------------
inline void check_launch(const char* who) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(who) + ": CUDA kernel launch failed: " +
                             cudaGetErrorString(err));
}

inline unsigned int grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t cap = std::numeric_limits<int32_t>::max();  // gridDim.x limit; the loop covers the rest
  if (blocks > cap) blocks = cap;
  return static_cast<unsigned int>(blocks);
}

// One block per work item (`work` of them); kernels loop over the items past the grid limit.
inline unsigned int blocks_for(int64_t work) {
  const int64_t cap = std::numeric_limits<int32_t>::max();
  return static_cast<unsigned int>(work < cap ? work : cap);
}

// True when there is nothing to do (some size is 0); throws on a negative size.
inline bool empty_or_bad(int64_t B, int64_t C, int64_t S, const char* who) {
  if (B < 0 || C < 0 || S < 0)
    throw std::runtime_error(std::string(who) + ": negative size");
  return B == 0 || C == 0 || S == 0;
}

inline void require(bool ok, const char* who, const char* what) {
  if (!ok) throw std::runtime_error(std::string(who) + ": " + what);
}

// ---------------------------------------------------------------------------------------------
// dtype dispatch: f is called with a value of each C++ element type (use decltype).
// ---------------------------------------------------------------------------------------------
// (gate dtype, state dtype): the four same-dtype pairs and the autocast mixes (half or bfloat16
// gates with float32 state), SPEC.md section 5.
template <typename F>
void dispatch_dtype_pair(DType g, DType s, const char* who, F&& f) {
  if (g == DType::Float32 && s == DType::Float32)
    f(float{}, float{});
  else if (g == DType::Float64 && s == DType::Float64)
    f(double{}, double{});
  else if (g == DType::Float16 && s == DType::Float16)
    f(__half{}, __half{});
  else if (g == DType::BFloat16 && s == DType::BFloat16)
    f(__nv_bfloat16{}, __nv_bfloat16{});
  else if (g == DType::Float16 && s == DType::Float32)
    f(__half{}, float{});
  else if (g == DType::BFloat16 && s == DType::Float32)
    f(__nv_bfloat16{}, float{});
  else
    throw std::runtime_error(std::string(who) + ": unsupported (gate dtype, state dtype) pair (" +
                             std::to_string(static_cast<int>(g)) + ", " +
                             std::to_string(static_cast<int>(s)) + ")");
}

// A single dtype for every tensor.
template <typename F>
void dispatch_dtype(DType d, const char* who, F&& f) {
  if (d == DType::Float32)
    f(float{});
  else if (d == DType::Float64)
    f(double{});
  else if (d == DType::Float16)
    f(__half{});
  else if (d == DType::BFloat16)
    f(__nv_bfloat16{});
  else
    throw std::runtime_error(std::string(who) + ": unsupported dtype (" +
                             std::to_string(static_cast<int>(d)) + ")");
}

}  // namespace cuda_detail
}  // namespace predkern
