// CUDA kernels for stlstm_output, PredRNN ST-LSTM stage 2 (SPEC.md section 2):
//   h' = sig(x_o + h_o + o_conv) * tanh(last_conv)
// with x_o, h_o the o blocks of x_cat (block 6) and h_cat (block 3), read in place. One launch for
// the forward, one for the backward. Only CUDA runtime headers, so this compiles with a bare nvcc.
//
// Same scheme as convlstm_gates.cu (helpers in common.cuh): one thread per (b, ch, s) element, the
// flat index decomposed so that consecutive threads follow the smaller of the channel / space
// strides of the main output (h_new forward, grad_x_cat backward). Templates: the one dtype T and
// the index type I: 4 x 2 instantiations per direction. Math in float (double for float64), each
// store rounds once; products in the order eager autograd evaluates them, so inf/NaN match.
#include "stlstm_output.h"

#include "common.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace predkern {
namespace stlstm_output_cuda {

using namespace cuda_detail;

constexpr int kXO = 6;  // block of o in x_cat (B, 7C, S)
constexpr int kHO = 3;  // block of o in h_cat (B, 4C, S)

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
template <typename X, typename I>
struct FwdArgs {
  int64_t n = 0;  // B*C*S
  Layout<I> lay;
  const X* x = nullptr;   // x_cat
  const X* h = nullptr;   // h_cat
  const X* oc = nullptr;  // o_conv
  const X* lc = nullptr;  // last_conv
  X* hn = nullptr;        // h_new
  X* og = nullptr;        // optional o_gate = sig(x_o + h_o + o_conv)
  X* tl = nullptr;        // optional tanh(last_conv), saved with o_gate
  Str<I> x_s, h_s, oc_s, lc_s, hn_s, og_s, tl_s;
  I x_blk = 0;  // offset of x_cat's o block
  I h_blk = 0;  // offset of h_cat's o block
};

template <typename X, typename I>
PK_HD void fwd_element(const FwdArgs<X, I>& a, I idx) {
  using T = OpMath<X>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const T zo = load<T>(a.x + a.x_s.at(b, ch, s) + a.x_blk) +
               load<T>(a.h + a.h_s.at(b, ch, s) + a.h_blk) + load<T>(a.oc + a.oc_s.at(b, ch, s));
  const T o = sigmoid(zo);
  const T t = op_tanh(load<T>(a.lc + a.lc_s.at(b, ch, s)));
  store(a.hn + a.hn_s.at(b, ch, s), o * t);
  if (a.og != nullptr) {
    store(a.og + a.og_s.at(b, ch, s), o);
    store(a.tl + a.tl_s.at(b, ch, s), t);
  }
}

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) stlstm_output_fwd_kernel(const FwdArgs<X, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    fwd_element<X, I>(a, static_cast<I>(k));
}

template <typename X, typename I>
FwdArgs<X, I> make_fwd_args(const STLSTMOutputForward& p) {
  FwdArgs<X, I> a;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.h_new);
  a.x = static_cast<const X*>(p.x_cat.ptr);
  a.h = static_cast<const X*>(p.h_cat.ptr);
  a.oc = static_cast<const X*>(p.o_conv.ptr);
  a.lc = static_cast<const X*>(p.last_conv.ptr);
  a.hn = static_cast<X*>(p.h_new.ptr);
  a.og = static_cast<X*>(p.o_gate.ptr);
  a.tl = static_cast<X*>(p.tanh_last.ptr);
  a.x_s = make_str<I>(p.x_cat);
  a.h_s = make_str<I>(p.h_cat);
  a.oc_s = make_str<I>(p.o_conv);
  a.lc_s = make_str<I>(p.last_conv);
  a.hn_s = make_str<I>(p.h_new);
  a.og_s = make_str<I>(p.o_gate);
  a.tl_s = make_str<I>(p.tanh_last);
  a.x_blk = block_offset<I>(p.x_cat, kXO, p.C);
  a.h_blk = block_offset<I>(p.h_cat, kHO, p.C);
  return a;
}

template <typename X, typename I>
void launch_fwd_i(const STLSTMOutputForward& p, cudaStream_t stream) {
  const FwdArgs<X, I> a = make_fwd_args<X, I>(p);
  stlstm_output_fwd_kernel<X, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("stlstm_output_forward_cuda");
}

inline bool fwd_fits_i32(const STLSTMOutputForward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 7, C, S),
                  {reach(p.x_cat, B, 7 * C, S), reach(p.h_cat, B, 4 * C, S),
                   reach(p.o_conv, B, C, S), reach(p.last_conv, B, C, S), reach(p.h_new, B, C, S),
                   reach(p.o_gate, B, C, S), reach(p.tanh_last, B, C, S)});
}

template <typename X>
void launch_fwd(const STLSTMOutputForward& p, cudaStream_t stream) {
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
  int64_t n = 0;
  Layout<I> lay;
  const X* gh = nullptr;   // grad_h
  const X* og = nullptr;   // o_gate
  const X* tl = nullptr;   // tanh(last_conv), saved by the forward
  X* gx = nullptr;         // grad_x_cat (B, 7C, S)
  X* ghc = nullptr;        // grad_h_cat (B, 4C, S)
  X* goc = nullptr;        // grad_o_conv
  X* glc = nullptr;        // grad_last_conv
  Str<I> gh_s, og_s, tl_s, gx_s, ghc_s, goc_s, glc_s;
  I gx_blk[7] = {0, 0, 0, 0, 0, 0, 0};
  I ghc_blk[4] = {0, 0, 0, 0};
};

template <typename X, typename I>
PK_HD void bwd_element(const BwdArgs<X, I>& a, I idx) {
  using T = OpMath<X>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const T dh = load<T>(a.gh + a.gh_s.at(b, ch, s));
  const T o = load<T>(a.og + a.og_s.at(b, ch, s));
  const T t = load<T>(a.tl + a.tl_s.at(b, ch, s));
  const T dzo = sigmoid_backward(dh * t, o);
  const T dlc = dh * o * (T(1) - t * t);

  const I gxo = a.gx_s.at(b, ch, s);
  for (int k = 0; k < 7; ++k) store(a.gx + gxo + a.gx_blk[k], k == kXO ? dzo : T(0));
  const I gho = a.ghc_s.at(b, ch, s);
  for (int k = 0; k < 4; ++k) store(a.ghc + gho + a.ghc_blk[k], k == kHO ? dzo : T(0));
  store(a.goc + a.goc_s.at(b, ch, s), dzo);
  store(a.glc + a.glc_s.at(b, ch, s), dlc);
}

template <typename X, typename I>
__global__ void __launch_bounds__(kThreads) stlstm_output_bwd_kernel(const BwdArgs<X, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    bwd_element<X, I>(a, static_cast<I>(k));
}

template <typename X, typename I>
BwdArgs<X, I> make_bwd_args(const STLSTMOutputBackward& p) {
  BwdArgs<X, I> a;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.grad_x_cat);
  a.gh = static_cast<const X*>(p.grad_h.ptr);
  a.og = static_cast<const X*>(p.o_gate.ptr);
  a.tl = static_cast<const X*>(p.tanh_last.ptr);
  a.gx = static_cast<X*>(p.grad_x_cat.ptr);
  a.ghc = static_cast<X*>(p.grad_h_cat.ptr);
  a.goc = static_cast<X*>(p.grad_o_conv.ptr);
  a.glc = static_cast<X*>(p.grad_last_conv.ptr);
  a.gh_s = make_str<I>(p.grad_h);
  a.og_s = make_str<I>(p.o_gate);
  a.tl_s = make_str<I>(p.tanh_last);
  a.gx_s = make_str<I>(p.grad_x_cat);
  a.ghc_s = make_str<I>(p.grad_h_cat);
  a.goc_s = make_str<I>(p.grad_o_conv);
  a.glc_s = make_str<I>(p.grad_last_conv);
  for (int k = 0; k < 7; ++k) a.gx_blk[k] = block_offset<I>(p.grad_x_cat, k, p.C);
  for (int k = 0; k < 4; ++k) a.ghc_blk[k] = block_offset<I>(p.grad_h_cat, k, p.C);
  return a;
}

template <typename X, typename I>
void launch_bwd_i(const STLSTMOutputBackward& p, cudaStream_t stream) {
  const BwdArgs<X, I> a = make_bwd_args<X, I>(p);
  stlstm_output_bwd_kernel<X, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("stlstm_output_backward_cuda");
}

inline bool bwd_fits_i32(const STLSTMOutputBackward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 7, C, S),
                  {reach(p.grad_h, B, C, S), reach(p.o_gate, B, C, S), reach(p.tanh_last, B, C, S),
                   reach(p.grad_x_cat, B, 7 * C, S), reach(p.grad_h_cat, B, 4 * C, S),
                   reach(p.grad_o_conv, B, C, S), reach(p.grad_last_conv, B, C, S)});
}

template <typename X>
void launch_bwd(const STLSTMOutputBackward& p, cudaStream_t stream) {
  if (bwd_fits_i32(p))
    launch_bwd_i<X, int32_t>(p, stream);
  else
    launch_bwd_i<X, int64_t>(p, stream);
}

}  // namespace stlstm_output_cuda

void stlstm_output_forward_cuda(const STLSTMOutputForward& p, void* stream) {
  using namespace stlstm_output_cuda;
  const char* who = "stlstm_output_forward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  require(p.x_cat.ptr != nullptr && p.h_cat.ptr != nullptr && p.o_conv.ptr != nullptr &&
              p.last_conv.ptr != nullptr && p.h_new.ptr != nullptr,
          who, "x_cat, h_cat, o_conv, last_conv and h_new are required");
  require((p.o_gate.ptr == nullptr) == (p.tanh_last.ptr == nullptr), who,
          "o_gate and tanh_last are saved together");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_fwd<decltype(x)>(p, st); });
}

void stlstm_output_backward_cuda(const STLSTMOutputBackward& p, void* stream) {
  using namespace stlstm_output_cuda;
  const char* who = "stlstm_output_backward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  require(p.grad_h.ptr != nullptr && p.o_gate.ptr != nullptr && p.tanh_last.ptr != nullptr &&
              p.grad_x_cat.ptr != nullptr && p.grad_h_cat.ptr != nullptr &&
              p.grad_o_conv.ptr != nullptr && p.grad_last_conv.ptr != nullptr,
          who,
          "grad_h, o_gate, tanh_last, grad_x_cat, grad_h_cat, grad_o_conv and grad_last_conv are "
          "required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype(p.dtype, who, [&](auto x) { launch_bwd<decltype(x)>(p, st); });
}

}  // namespace predkern
