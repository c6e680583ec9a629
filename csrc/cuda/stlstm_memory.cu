// CUDA kernels for stlstm_memory, PredRNN ST-LSTM stage 1 (SPEC.md section 2): one launch for the
// forward, one for the backward. Only CUDA runtime headers, so this compiles with a bare nvcc.
//
// Same scheme as convlstm_gates.cu (helpers in common.cuh): one thread per (b, ch, s) element, the
// flat index decomposed so that consecutive threads follow the smaller of the channel / space
// strides of the main output (mem forward, grad_x_cat backward), for NCHW and channels_last alike.
// Templates: gate dtype G, state dtype S (the six allowed pairs) and index type I (int32 when every
// reachable offset fits, else int64): 6 x 2 instantiations per direction. Optional tensors are
// warp-uniform branches on null pointers. Math in float (double for float64), each store rounds
// once; products are evaluated in the order eager autograd evaluates them, so inf/NaN match.
#include "stlstm_memory.h"

#include "common.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>

namespace predkern {
namespace stlstm_memory_cuda {

using namespace cuda_detail;

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
template <typename G, typename S, typename I>
struct FwdArgs {
  using T = OpMath<G>;
  int64_t n = 0;  // B*C*S
  Layout<I> lay;
  const G* x = nullptr;  // x_cat (B, 7C, S): blocks 0..5 read here (block 6 is stage 2's)
  const G* h = nullptr;  // h_cat (B, 4C, S): blocks 0..2
  const G* mc = nullptr;  // m_cat (B, 3C, S)
  const S* c = nullptr;
  const S* m = nullptr;
  S* mem = nullptr;  // (B, 2C, S): c' then m'
  G* dc = nullptr;   // optional delta_c
  G* dm = nullptr;   // optional delta_m
  G* gates = nullptr;  // optional gates (B, 6C, S): i, f, g, i', f', g', gate dtype
  Str<I> x_s, h_s, mc_s, c_s, m_s, mem_s, dc_s, dm_s, gates_s;
  I x_blk[6] = {0, 0, 0, 0, 0, 0};  // offset of channel block k
  I h_blk[3] = {0, 0, 0};
  I mc_blk[3] = {0, 0, 0};
  I gates_blk[6] = {0, 0, 0, 0, 0, 0};
  I mem_blk1 = 0;  // offset of m' in mem
  T forget_bias = T(0);
};

template <typename G, typename S, typename I>
PK_HD void fwd_element(const FwdArgs<G, S, I>& a, I idx) {
  using T = OpMath<G>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const I xo = a.x_s.at(b, ch, s), ho = a.h_s.at(b, ch, s), mo = a.mc_s.at(b, ch, s);
  const T zi = load<T>(a.x + xo + a.x_blk[kSI]) + load<T>(a.h + ho + a.h_blk[0]);
  const T zf = load<T>(a.x + xo + a.x_blk[kSF]) + load<T>(a.h + ho + a.h_blk[1]) + a.forget_bias;
  const T zg = load<T>(a.x + xo + a.x_blk[kSG]) + load<T>(a.h + ho + a.h_blk[2]);
  const T zim = load<T>(a.x + xo + a.x_blk[kSIm]) + load<T>(a.mc + mo + a.mc_blk[0]);
  const T zfm =
      load<T>(a.x + xo + a.x_blk[kSFm]) + load<T>(a.mc + mo + a.mc_blk[1]) + a.forget_bias;
  const T zgm = load<T>(a.x + xo + a.x_blk[kSGm]) + load<T>(a.mc + mo + a.mc_blk[2]);
  const T cv = load<T>(a.c + a.c_s.at(b, ch, s));
  const T mv = load<T>(a.m + a.m_s.at(b, ch, s));

  const T i = sigmoid(zi), f = sigmoid(zf), g = op_tanh(zg);
  const T im = sigmoid(zim), fm = sigmoid(zfm), gm = op_tanh(zgm);
  const T dcv = i * g;
  const T dmv = im * gm;
  const T cn = f * cv + dcv;
  const T mn = fm * mv + dmv;

  const I memo = a.mem_s.at(b, ch, s);
  store(a.mem + memo, cn);
  store(a.mem + memo + a.mem_blk1, mn);
  if (a.dc != nullptr) store(a.dc + a.dc_s.at(b, ch, s), dcv);
  if (a.dm != nullptr) store(a.dm + a.dm_s.at(b, ch, s), dmv);
  if (a.gates != nullptr) {
    const I go = a.gates_s.at(b, ch, s);
    store(a.gates + go + a.gates_blk[kSI], i);
    store(a.gates + go + a.gates_blk[kSF], f);
    store(a.gates + go + a.gates_blk[kSG], g);
    store(a.gates + go + a.gates_blk[kSIm], im);
    store(a.gates + go + a.gates_blk[kSFm], fm);
    store(a.gates + go + a.gates_blk[kSGm], gm);
  }
}

template <typename G, typename S, typename I>
__global__ void __launch_bounds__(kThreads) stlstm_memory_fwd_kernel(const FwdArgs<G, S, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    fwd_element<G, S, I>(a, static_cast<I>(k));
}

template <typename G, typename S, typename I>
FwdArgs<G, S, I> make_fwd_args(const STLSTMMemoryForward& p) {
  FwdArgs<G, S, I> a;
  const int64_t C = p.C;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.mem);
  a.x = static_cast<const G*>(p.x_cat.ptr);
  a.h = static_cast<const G*>(p.h_cat.ptr);
  a.mc = static_cast<const G*>(p.m_cat.ptr);
  a.c = static_cast<const S*>(p.c.ptr);
  a.m = static_cast<const S*>(p.m.ptr);
  a.mem = static_cast<S*>(p.mem.ptr);
  a.dc = static_cast<G*>(p.delta_c.ptr);
  a.dm = static_cast<G*>(p.delta_m.ptr);
  a.gates = static_cast<G*>(p.gates.ptr);
  a.x_s = make_str<I>(p.x_cat);
  a.h_s = make_str<I>(p.h_cat);
  a.mc_s = make_str<I>(p.m_cat);
  a.c_s = make_str<I>(p.c);
  a.m_s = make_str<I>(p.m);
  a.mem_s = make_str<I>(p.mem);
  a.dc_s = make_str<I>(p.delta_c);
  a.dm_s = make_str<I>(p.delta_m);
  a.gates_s = make_str<I>(p.gates);
  for (int k = 0; k < 6; ++k) {
    a.x_blk[k] = block_offset<I>(p.x_cat, k, C);
    a.gates_blk[k] = block_offset<I>(p.gates, k, C);
  }
  for (int k = 0; k < 3; ++k) {
    a.h_blk[k] = block_offset<I>(p.h_cat, k, C);
    a.mc_blk[k] = block_offset<I>(p.m_cat, k, C);
  }
  a.mem_blk1 = block_offset<I>(p.mem, 1, C);
  a.forget_bias = static_cast<typename FwdArgs<G, S, I>::T>(p.forget_bias);
  return a;
}

template <typename G, typename S, typename I>
void launch_fwd_i(const STLSTMMemoryForward& p, cudaStream_t stream) {
  const FwdArgs<G, S, I> a = make_fwd_args<G, S, I>(p);
  stlstm_memory_fwd_kernel<G, S, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("stlstm_memory_forward_cuda");
}

inline bool fwd_fits_i32(const STLSTMMemoryForward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 7, C, S),
                  {reach(p.x_cat, B, 7 * C, S), reach(p.h_cat, B, 4 * C, S),
                   reach(p.m_cat, B, 3 * C, S), reach(p.c, B, C, S), reach(p.m, B, C, S),
                   reach(p.mem, B, 2 * C, S), reach(p.delta_c, B, C, S),
                   reach(p.delta_m, B, C, S), reach(p.gates, B, 6 * C, S)});
}

template <typename G, typename S>
void launch_fwd(const STLSTMMemoryForward& p, cudaStream_t stream) {
  if (fwd_fits_i32(p))
    launch_fwd_i<G, S, int32_t>(p, stream);
  else
    launch_fwd_i<G, S, int64_t>(p, stream);
}

// ---------------------------------------------------------------------------------------------
// Backward.
// ---------------------------------------------------------------------------------------------
template <typename G, typename S, typename I>
struct BwdArgs {
  int64_t n = 0;
  Layout<I> lay;
  const S* gmem = nullptr;  // optional grad_mem (B, 2C, S)
  const G* gdc = nullptr;   // optional grad_delta_c
  const G* gdm = nullptr;   // optional grad_delta_m
  const G* gates = nullptr;  // (B, 6C, S): i, f, g, i', f', g'
  const S* c = nullptr;
  const S* m = nullptr;
  G* gx = nullptr;   // grad_x_cat (B, 7C, S)
  G* gh = nullptr;   // grad_h_cat (B, 4C, S)
  G* gmc = nullptr;  // grad_m_cat (B, 3C, S)
  S* gc = nullptr;
  S* gm = nullptr;
  Str<I> gmem_s, gdc_s, gdm_s, gates_s, c_s, m_s, gx_s, gh_s, gmc_s, gc_s, gm_s;
  I gmem_blk1 = 0;
  I gates_blk[6] = {0, 0, 0, 0, 0, 0};
  I gx_blk[7] = {0, 0, 0, 0, 0, 0, 0};
  I gh_blk[4] = {0, 0, 0, 0};
  I gmc_blk[3] = {0, 0, 0};
};

template <typename G, typename S, typename I>
PK_HD void bwd_element(const BwdArgs<G, S, I>& a, I idx) {
  using T = OpMath<G>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const I go = a.gates_s.at(b, ch, s);
  const T i = load<T>(a.gates + go + a.gates_blk[kSI]);
  const T f = load<T>(a.gates + go + a.gates_blk[kSF]);
  const T g = load<T>(a.gates + go + a.gates_blk[kSG]);
  const T im = load<T>(a.gates + go + a.gates_blk[kSIm]);
  const T fm = load<T>(a.gates + go + a.gates_blk[kSFm]);
  const T gm = load<T>(a.gates + go + a.gates_blk[kSGm]);

  // An absent gradient contributes nothing: its terms are skipped, not multiplied by zero, so a
  // non-finite value on a path that received no gradient does not leak NaN (as eager autograd,
  // which never runs the nodes reachable only from outputs without a gradient).
  const bool has_mem = a.gmem != nullptr;
  T dcn = T(0), dmn = T(0);  // grads of c' and m'
  if (has_mem) {
    const I o = a.gmem_s.at(b, ch, s);
    dcn = load<T>(a.gmem + o);
    dmn = load<T>(a.gmem + o + a.gmem_blk1);
  }
  // tc, tm: the total grads of delta_c = i*g and delta_m = i'*g' (through c'/m' and directly).
  T tc = dcn, tm = dmn;
  bool has_tc = has_mem, has_tm = has_mem;
  if (a.gdc != nullptr) {
    const T v = load<T>(a.gdc + a.gdc_s.at(b, ch, s));
    tc = has_tc ? tc + v : v;
    has_tc = true;
  }
  if (a.gdm != nullptr) {
    const T v = load<T>(a.gdm + a.gdm_s.at(b, ch, s));
    tm = has_tm ? tm + v : v;
    has_tm = true;
  }

  T dzi = T(0), dzf = T(0), dzg = T(0), dzim = T(0), dzfm = T(0), dzgm = T(0);
  T dc = T(0), dm = T(0);
  if (has_tc) {
    dzi = sigmoid_backward(tc * g, i);
    dzg = tc * i * (T(1) - g * g);
  }
  if (has_tm) {
    dzim = sigmoid_backward(tm * gm, im);
    dzgm = tm * im * (T(1) - gm * gm);
  }
  if (has_mem) {
    const T cv = load<T>(a.c + a.c_s.at(b, ch, s));
    const T mv = load<T>(a.m + a.m_s.at(b, ch, s));
    dzf = sigmoid_backward(dcn * cv, f);
    dc = dcn * f;
    dzfm = sigmoid_backward(dmn * mv, fm);
    dm = dmn * fm;
  }

  const I gxo = a.gx_s.at(b, ch, s);
  store(a.gx + gxo + a.gx_blk[0], dzi);
  store(a.gx + gxo + a.gx_blk[1], dzf);
  store(a.gx + gxo + a.gx_blk[2], dzg);
  store(a.gx + gxo + a.gx_blk[3], dzim);
  store(a.gx + gxo + a.gx_blk[4], dzfm);
  store(a.gx + gxo + a.gx_blk[5], dzgm);
  store(a.gx + gxo + a.gx_blk[6], T(0));  // o: stage 2's
  const I gho = a.gh_s.at(b, ch, s);
  store(a.gh + gho + a.gh_blk[0], dzi);
  store(a.gh + gho + a.gh_blk[1], dzf);
  store(a.gh + gho + a.gh_blk[2], dzg);
  store(a.gh + gho + a.gh_blk[3], T(0));  // o: stage 2's
  const I gmo = a.gmc_s.at(b, ch, s);
  store(a.gmc + gmo + a.gmc_blk[0], dzim);
  store(a.gmc + gmo + a.gmc_blk[1], dzfm);
  store(a.gmc + gmo + a.gmc_blk[2], dzgm);
  store(a.gc + a.gc_s.at(b, ch, s), dc);
  store(a.gm + a.gm_s.at(b, ch, s), dm);
}

template <typename G, typename S, typename I>
__global__ void __launch_bounds__(kThreads) stlstm_memory_bwd_kernel(const BwdArgs<G, S, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    bwd_element<G, S, I>(a, static_cast<I>(k));
}

template <typename G, typename S, typename I>
BwdArgs<G, S, I> make_bwd_args(const STLSTMMemoryBackward& p) {
  BwdArgs<G, S, I> a;
  const int64_t C = p.C;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.grad_x_cat);
  a.gmem = static_cast<const S*>(p.grad_mem.ptr);
  a.gdc = static_cast<const G*>(p.grad_delta_c.ptr);
  a.gdm = static_cast<const G*>(p.grad_delta_m.ptr);
  a.gates = static_cast<const G*>(p.gates.ptr);
  a.c = static_cast<const S*>(p.c.ptr);
  a.m = static_cast<const S*>(p.m.ptr);
  a.gx = static_cast<G*>(p.grad_x_cat.ptr);
  a.gh = static_cast<G*>(p.grad_h_cat.ptr);
  a.gmc = static_cast<G*>(p.grad_m_cat.ptr);
  a.gc = static_cast<S*>(p.grad_c.ptr);
  a.gm = static_cast<S*>(p.grad_m.ptr);
  a.gmem_s = make_str<I>(p.grad_mem);
  a.gdc_s = make_str<I>(p.grad_delta_c);
  a.gdm_s = make_str<I>(p.grad_delta_m);
  a.gates_s = make_str<I>(p.gates);
  a.c_s = make_str<I>(p.c);
  a.m_s = make_str<I>(p.m);
  a.gx_s = make_str<I>(p.grad_x_cat);
  a.gh_s = make_str<I>(p.grad_h_cat);
  a.gmc_s = make_str<I>(p.grad_m_cat);
  a.gc_s = make_str<I>(p.grad_c);
  a.gm_s = make_str<I>(p.grad_m);
  a.gmem_blk1 = block_offset<I>(p.grad_mem, 1, C);
  for (int k = 0; k < 6; ++k) a.gates_blk[k] = block_offset<I>(p.gates, k, C);
  for (int k = 0; k < 7; ++k) a.gx_blk[k] = block_offset<I>(p.grad_x_cat, k, C);
  for (int k = 0; k < 4; ++k) a.gh_blk[k] = block_offset<I>(p.grad_h_cat, k, C);
  for (int k = 0; k < 3; ++k) a.gmc_blk[k] = block_offset<I>(p.grad_m_cat, k, C);
  return a;
}

template <typename G, typename S, typename I>
void launch_bwd_i(const STLSTMMemoryBackward& p, cudaStream_t stream) {
  const BwdArgs<G, S, I> a = make_bwd_args<G, S, I>(p);
  stlstm_memory_bwd_kernel<G, S, I><<<grid_for(a.n), kThreads, 0, stream>>>(a);
  check_launch("stlstm_memory_backward_cuda");
}

inline bool bwd_fits_i32(const STLSTMMemoryBackward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 7, C, S),
                  {reach(p.grad_mem, B, 2 * C, S), reach(p.grad_delta_c, B, C, S),
                   reach(p.grad_delta_m, B, C, S), reach(p.gates, B, 6 * C, S),
                   reach(p.c, B, C, S), reach(p.m, B, C, S), reach(p.grad_x_cat, B, 7 * C, S),
                   reach(p.grad_h_cat, B, 4 * C, S), reach(p.grad_m_cat, B, 3 * C, S),
                   reach(p.grad_c, B, C, S), reach(p.grad_m, B, C, S)});
}

template <typename G, typename S>
void launch_bwd(const STLSTMMemoryBackward& p, cudaStream_t stream) {
  if (bwd_fits_i32(p))
    launch_bwd_i<G, S, int32_t>(p, stream);
  else
    launch_bwd_i<G, S, int64_t>(p, stream);
}

}  // namespace stlstm_memory_cuda

void stlstm_memory_forward_cuda(const STLSTMMemoryForward& p, void* stream) {
  using namespace stlstm_memory_cuda;
  const char* who = "stlstm_memory_forward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  require(p.x_cat.ptr != nullptr && p.h_cat.ptr != nullptr && p.m_cat.ptr != nullptr &&
              p.c.ptr != nullptr && p.m.ptr != nullptr && p.mem.ptr != nullptr,
          who, "x_cat, h_cat, m_cat, c, m and mem are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype_pair(p.gate_dtype, p.state_dtype, who, [&](auto g, auto s) {
    launch_fwd<decltype(g), decltype(s)>(p, st);
  });
}

void stlstm_memory_backward_cuda(const STLSTMMemoryBackward& p, void* stream) {
  using namespace stlstm_memory_cuda;
  const char* who = "stlstm_memory_backward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  require(p.gates.ptr != nullptr && p.c.ptr != nullptr && p.m.ptr != nullptr &&
              p.grad_x_cat.ptr != nullptr && p.grad_h_cat.ptr != nullptr &&
              p.grad_m_cat.ptr != nullptr && p.grad_c.ptr != nullptr && p.grad_m.ptr != nullptr,
          who, "gates, c, m, grad_x_cat, grad_h_cat, grad_m_cat, grad_c and grad_m are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype_pair(p.gate_dtype, p.state_dtype, who, [&](auto g, auto s) {
    launch_bwd<decltype(g), decltype(s)>(p, st);
  });
}

}  // namespace predkern
