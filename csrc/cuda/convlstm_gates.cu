// CUDA kernels for convlstm_gates (SPEC.md section 1): one launch for the forward, one for the
// backward. Only CUDA runtime headers, so this compiles with a bare nvcc (DESIGN.md).
//
// Each thread handles one (b, ch, s) element of the (B, C, S) outputs. The flat element index is
// decomposed as (b, mid, fast), where `fast` is whichever of channel / space has the smaller stride
// in the main output (h_new forward, grad_c backward): space for NCHW, channels for channels_last,
// so consecutive threads touch consecutive addresses in both layouts.
//
// Templates: gate dtype G, state dtype S (the six allowed pairs), index type I (int32 when every
// reachable offset fits, else int64) and the gate activation. Optional inputs are uniform runtime
// branches on null pointers (warp-uniform, no divergence), which keeps the instantiation count at
// 6 x 2 x 2 per direction; the saved gates' type (G or the math type) is such a branch too. Math
// is in float (double for float64); loads convert, stores round once.
// The helpers shared with the other pointwise kernels (loads/stores, DivMod, Layout, int32 fit,
// dtype dispatch, launch checks) are in common.cuh.
#include "convlstm_gates.h"

#include "common.cuh"

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace predkern {
namespace convlstm_cuda {

using namespace cuda_detail;

// ---------------------------------------------------------------------------------------------
// Gate activations (sigmoid or Keras hard sigmoid).
// ---------------------------------------------------------------------------------------------
// 0.2*x + 0.5 without fma contraction, so the clamp boundaries (x = +-2.5) land exactly where
// eager PyTorch puts them (a mul then an add, each rounded).
PK_HD float hard_t(float x) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(__fmul_rn(0.2f, x), 0.5f);
#else
  volatile float m = 0.2f * x;
  return m + 0.5f;
#endif
}
PK_HD double hard_t(double x) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(__dmul_rn(0.2, x), 0.5);
#else
  volatile double m = 0.2 * x;
  return m + 0.5;
#endif
}

template <typename T, int ACT>
PK_HD T act(T z) {
  if (ACT == static_cast<int>(GateAct::Sigmoid)) {
    return sigmoid(z);
  } else {
    const T t = hard_t(z);
    return t < T(0) ? T(0) : (t > T(1) ? T(1) : t);  // NaN propagates (no fmin/fmax)
  }
}

// The closed interval of z where the float64 reference's clamp(0.2 z + 0.5, 0, 1) passes the
// gradient (torch.clamp's backward is inclusive): [-2.5, 2.5] for float32 and half inputs, one
// more ulp above for float64 (0.2 z rounds to 0.5 there). A float32 0.2 z + 0.5 would differ:
// it rounds 2.5 + 1 ulp onto 1.
template <typename T> PK_HD T hard_hi();
template <> PK_HD float hard_hi<float>() { return 2.5f; }
template <> PK_HD double hard_hi<double>() { return 2.5000000000000004; }

// grad * d act / dz, given z and a = act(z). Hard sigmoid selects rather than multiplying by a
// 0/1 mask, so an infinite grad outside gives 0, not NaN.
template <typename T, int ACT>
PK_HD T act_backward(T grad, T z, T a) {
  if (ACT == static_cast<int>(GateAct::Sigmoid)) {
    return sigmoid_backward(grad, a);
  } else {
    return (z >= T(-2.5) && z <= hard_hi<T>()) ? grad * T(0.2) : T(0);
  }
}

inline void check_slots(const int (&slot_block)[4], const char* who) {
  int seen = 0;
  for (int k = 0; k < 4; ++k) {
    if (slot_block[k] < 0 || slot_block[k] > 3 || (seen & (1 << slot_block[k])))
      throw std::runtime_error(std::string(who) + ": slot_block must be a permutation of 0..3");
    seen |= 1 << slot_block[k];
  }
}

// ---------------------------------------------------------------------------------------------
// Forward.
// ---------------------------------------------------------------------------------------------
template <typename G, typename S, typename I>
struct FwdArgs {
  using T = OpMath<G>;
  int64_t n = 0;  // B*C*S
  Layout<I> lay;
  const G* gx = nullptr;
  const G* gh = nullptr;
  const S* c = nullptr;
  const S* bias = nullptr;
  const S* peep = nullptr;
  G* h = nullptr;
  S* cn = nullptr;
  void* sg = nullptr;  // optional saved_gates: G if sg_low, else T (see saved_gates in convlstm_gates.h)
  bool sg_low = false;
  Str<I> gx_s, gh_s, c_s, peep_s, h_s, cn_s, sg_s;
  I bias_sc = 0;
  I gx_blk[4] = {0, 0, 0, 0};    // offset of the block holding slot k
  I gh_blk[4] = {0, 0, 0, 0};
  I bias_blk[4] = {0, 0, 0, 0};
  I sg_blk[4] = {0, 0, 0, 0};    // saved_gates is in slot order: block k
  T forget_bias = T(0);
};

// The saved gates' type is chosen per call (a uniform branch), not a template parameter: a third
// instantiation per half type cost compile time in every build (its speed on a GPU is unmeasured;
// the CPU twin was 10% slower in float32 until that case became the constant below).
template <typename P, typename T, typename I>
PK_HD void store_saved(void* base, I off, const I (&blk)[4], T i, T f, T g, T o) {
  P* sg = static_cast<P*>(base) + off;
  store(sg + blk[kI], i);
  store(sg + blk[kF], f);
  store(sg + blk[kG], g);
  store(sg + blk[kO], o);
}

template <typename P, typename T, typename I>
PK_HD T load_saved(const void* base, I off, I blk) {
  return load<T>(static_cast<const P*>(base) + off + blk);
}

template <typename G, typename S, typename I, int ACT>
PK_HD void fwd_element(const FwdArgs<G, S, I>& a, I idx) {
  using T = OpMath<G>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  const T cv = load<T>(a.c + a.c_s.at(b, ch, s));
  T z[4];
  const I gxo = a.gx_s.at(b, ch, s);
  for (int k = 0; k < 4; ++k) z[k] = load<T>(a.gx + gxo + a.gx_blk[k]);
  if (a.gh != nullptr) {
    const I gho = a.gh_s.at(b, ch, s);
    for (int k = 0; k < 4; ++k) z[k] += load<T>(a.gh + gho + a.gh_blk[k]);
  }
  if (a.bias != nullptr) {
    const I bo = ch * a.bias_sc;
    for (int k = 0; k < 4; ++k) z[k] += load<T>(a.bias + bo + a.bias_blk[k]);
  }
  T zi = z[kI], zf = z[kF], zo = z[kO];
  const T zg = z[kG];
  T wco = T(0);
  const bool peep = a.peep != nullptr;
  if (peep) {
    const I po = a.peep_s.at(0, ch, s);
    zi += mul_rn(load<T>(a.peep + po), cv);
    zf += mul_rn(load<T>(a.peep + po + a.peep_s.sb), cv);
    wco = load<T>(a.peep + po + 2 * a.peep_s.sb);
  }
  zf += a.forget_bias;

  const T i = act<T, ACT>(zi);
  const T f = act<T, ACT>(zf);
  const T g = op_tanh(zg);
  const T cn = f * cv + i * g;
  if (peep) zo += mul_rn(wco, cn);
  const T o = act<T, ACT>(zo);
  const T h = o * op_tanh(cn);

  store(a.h + a.h_s.at(b, ch, s), h);
  store(a.cn + a.cn_s.at(b, ch, s), cn);
  if (a.sg != nullptr) {  // see saved_gates in convlstm_gates.h
    constexpr bool hard = ACT == static_cast<int>(GateAct::HardSigmoid);
    const I so = a.sg_s.at(b, ch, s);
    if (std::is_same<G, T>::value || a.sg_low)  // one type where G is the math type: no branch
      store_saved<G>(a.sg, so, a.sg_blk, hard ? zi : i, hard ? zf : f, g, hard ? zo : o);
    else
      store_saved<T>(a.sg, so, a.sg_blk, hard ? zi : i, hard ? zf : f, g, hard ? zo : o);
  }
}

template <typename G, typename S, typename I, int ACT>
__global__ void __launch_bounds__(kThreads) convlstm_gates_fwd_kernel(const FwdArgs<G, S, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    fwd_element<G, S, I, ACT>(a, static_cast<I>(k));
}

template <typename G, typename S, typename I>
FwdArgs<G, S, I> make_fwd_args(const ConvLSTMGatesForward& p) {
  FwdArgs<G, S, I> a;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.h_new);
  a.gx = static_cast<const G*>(p.gates_x.ptr);
  a.gh = static_cast<const G*>(p.gates_h.ptr);
  a.c = static_cast<const S*>(p.c.ptr);
  a.bias = static_cast<const S*>(p.bias.ptr);
  a.peep = static_cast<const S*>(p.peephole.ptr);
  a.h = static_cast<G*>(p.h_new.ptr);
  a.cn = static_cast<S*>(p.c_new.ptr);
  a.sg = p.saved_gates.ptr;
  a.sg_low = p.saved_in_gate_dtype;
  a.gx_s = make_str<I>(p.gates_x);
  a.gh_s = make_str<I>(p.gates_h);
  a.c_s = make_str<I>(p.c);
  a.peep_s = make_str<I>(p.peephole);
  a.h_s = make_str<I>(p.h_new);
  a.cn_s = make_str<I>(p.c_new);
  a.sg_s = make_str<I>(p.saved_gates);
  a.bias_sc = static_cast<I>(p.bias.sc);
  for (int k = 0; k < 4; ++k) {
    a.gx_blk[k] = block_offset<I>(p.gates_x, p.slot_block[k], p.C);
    a.gh_blk[k] = block_offset<I>(p.gates_h, p.slot_block[k], p.C);
    a.bias_blk[k] = block_offset<I>(p.bias, p.slot_block[k], p.C);
    a.sg_blk[k] = block_offset<I>(p.saved_gates, k, p.C);
  }
  a.forget_bias = static_cast<typename FwdArgs<G, S, I>::T>(p.forget_bias);
  return a;
}

template <typename G, typename S, typename I>
void launch_fwd_i(const ConvLSTMGatesForward& p, cudaStream_t stream) {
  const FwdArgs<G, S, I> a = make_fwd_args<G, S, I>(p);
  const unsigned int grid = grid_for(a.n);
  constexpr int kSig = static_cast<int>(GateAct::Sigmoid), kHard = static_cast<int>(GateAct::HardSigmoid);
  if (p.act == GateAct::Sigmoid)
    convlstm_gates_fwd_kernel<G, S, I, kSig><<<grid, kThreads, 0, stream>>>(a);
  else
    convlstm_gates_fwd_kernel<G, S, I, kHard><<<grid, kThreads, 0, stream>>>(a);
  check_launch("convlstm_gates_forward_cuda");
}

inline bool fwd_fits_i32(const ConvLSTMGatesForward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 4, C, S),
                  {reach(p.gates_x, B, 4 * C, S), reach(p.gates_h, B, 4 * C, S), reach(p.c, B, C, S),
                   reach(p.bias, 1, 4 * C, 1), reach(p.peephole, 3, C, S), reach(p.h_new, B, C, S),
                   reach(p.c_new, B, C, S), reach(p.saved_gates, B, 4 * C, S)});
}

template <typename G, typename S>
void launch_fwd(const ConvLSTMGatesForward& p, cudaStream_t stream) {
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
  const G* gh = nullptr;   // grad_h (gate dtype, like h_new)
  const S* gcn = nullptr;  // grad_c_new
  const void* sg = nullptr;  // saved_gates: G if sg_low, else T
  bool sg_low = false;
  const S* c = nullptr;
  const S* peep = nullptr;
  G* gg = nullptr;  // grad_gates
  S* gc = nullptr;  // grad_c
  Str<I> gh_s, gcn_s, sg_s, c_s, peep_s, gg_s, gc_s;
  I sg_blk[4] = {0, 0, 0, 0};   // slot order
  I gg_blk[4] = {0, 0, 0, 0};   // block holding slot k
};

template <typename G, typename S, typename I, int ACT>
PK_HD void bwd_element(const BwdArgs<G, S, I>& a, I idx) {
  using T = OpMath<G>;
  I b, ch, s;
  a.lay.decompose(idx, b, ch, s);

  // v: the saved value of a sigmoid gate, or the saved argument of a hard_sigmoid one
  // (act_backward reads the argument only under hard_sigmoid, the value otherwise).
  constexpr bool hard = ACT == static_cast<int>(GateAct::HardSigmoid);
  const I so = a.sg_s.at(b, ch, s);
  const auto saved = [&](int k) {
    return std::is_same<G, T>::value || a.sg_low ? load_saved<G, T>(a.sg, so, a.sg_blk[k])
                                                 : load_saved<T, T>(a.sg, so, a.sg_blk[k]);
  };
  const T vi = saved(kI), vf = saved(kF), g = saved(kG), vo = saved(kO);
  const T cv = load<T>(a.c + a.c_s.at(b, ch, s));
  const bool peep = a.peep != nullptr;
  T wci = T(0), wcf = T(0), wco = T(0);
  if (peep) {
    const I po = a.peep_s.at(0, ch, s);
    wci = load<T>(a.peep + po);
    wcf = load<T>(a.peep + po + a.peep_s.sb);
    wco = load<T>(a.peep + po + 2 * a.peep_s.sb);
  }

  const T i = hard ? act<T, ACT>(vi) : vi;
  const T f = hard ? act<T, ACT>(vf) : vf;

  // An absent gradient contributes nothing: its terms are skipped, not multiplied by zero, so a
  // non-finite value on a path that received no gradient does not leak NaN (as eager autograd).
  T dcn = a.gcn != nullptr ? load<T>(a.gcn + a.gcn_s.at(b, ch, s)) : T(0);
  T dzo = T(0);
  if (a.gh != nullptr) {
    const T dh = load<T>(a.gh + a.gh_s.at(b, ch, s));
    const T cn = f * cv + i * g;
    const T tc = op_tanh(cn);
    const T o = hard ? act<T, ACT>(vo) : vo;
    dzo = act_backward<T, ACT>(dh * tc, vo, o);
    dcn += dh * o * (T(1) - tc * tc);
    if (peep) dcn += dzo * wco;
  }
  const T dzi = act_backward<T, ACT>(dcn * g, vi, i);
  const T dzf = act_backward<T, ACT>(dcn * cv, vf, f);
  const T dzg = dcn * i * (T(1) - g * g);
  T dc = dcn * f;
  if (peep) dc += dzi * wci + dzf * wcf;

  const I ggo = a.gg_s.at(b, ch, s);
  store(a.gg + ggo + a.gg_blk[kI], dzi);
  store(a.gg + ggo + a.gg_blk[kF], dzf);
  store(a.gg + ggo + a.gg_blk[kG], dzg);
  store(a.gg + ggo + a.gg_blk[kO], dzo);
  store(a.gc + a.gc_s.at(b, ch, s), dc);
}

template <typename G, typename S, typename I, int ACT>
__global__ void __launch_bounds__(kThreads) convlstm_gates_bwd_kernel(const BwdArgs<G, S, I> a) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k < a.n; k += step)
    bwd_element<G, S, I, ACT>(a, static_cast<I>(k));
}

template <typename G, typename S, typename I>
BwdArgs<G, S, I> make_bwd_args(const ConvLSTMGatesBackward& p) {
  BwdArgs<G, S, I> a;
  a.n = p.B * p.C * p.S;
  a.lay = make_layout<I>(p.C, p.S, p.grad_c);
  a.gh = static_cast<const G*>(p.grad_h.ptr);
  a.gcn = static_cast<const S*>(p.grad_c_new.ptr);
  a.sg = p.saved_gates.ptr;
  a.sg_low = p.saved_in_gate_dtype;
  a.c = static_cast<const S*>(p.c.ptr);
  a.peep = static_cast<const S*>(p.peephole.ptr);
  a.gg = static_cast<G*>(p.grad_gates.ptr);
  a.gc = static_cast<S*>(p.grad_c.ptr);
  a.gh_s = make_str<I>(p.grad_h);
  a.gcn_s = make_str<I>(p.grad_c_new);
  a.sg_s = make_str<I>(p.saved_gates);
  a.c_s = make_str<I>(p.c);
  a.peep_s = make_str<I>(p.peephole);
  a.gg_s = make_str<I>(p.grad_gates);
  a.gc_s = make_str<I>(p.grad_c);
  for (int k = 0; k < 4; ++k) {
    a.sg_blk[k] = block_offset<I>(p.saved_gates, k, p.C);
    a.gg_blk[k] = block_offset<I>(p.grad_gates, p.slot_block[k], p.C);
  }
  return a;
}

template <typename G, typename S, typename I>
void launch_bwd_i(const ConvLSTMGatesBackward& p, cudaStream_t stream) {
  const BwdArgs<G, S, I> a = make_bwd_args<G, S, I>(p);
  const unsigned int grid = grid_for(a.n);
  constexpr int kSig = static_cast<int>(GateAct::Sigmoid), kHard = static_cast<int>(GateAct::HardSigmoid);
  if (p.act == GateAct::Sigmoid)
    convlstm_gates_bwd_kernel<G, S, I, kSig><<<grid, kThreads, 0, stream>>>(a);
  else
    convlstm_gates_bwd_kernel<G, S, I, kHard><<<grid, kThreads, 0, stream>>>(a);
  check_launch("convlstm_gates_backward_cuda");
}

inline bool bwd_fits_i32(const ConvLSTMGatesBackward& p) {
  const int64_t B = p.B, C = p.C, S = p.S;
  return fits_i32(stacked_numel(B, 4, C, S),
                  {reach(p.grad_h, B, C, S), reach(p.grad_c_new, B, C, S),
                   reach(p.saved_gates, B, 4 * C, S), reach(p.c, B, C, S), reach(p.peephole, 3, C, S),
                   reach(p.grad_gates, B, 4 * C, S), reach(p.grad_c, B, C, S)});
}

template <typename G, typename S>
void launch_bwd(const ConvLSTMGatesBackward& p, cudaStream_t stream) {
  if (bwd_fits_i32(p))
    launch_bwd_i<G, S, int32_t>(p, stream);
  else
    launch_bwd_i<G, S, int64_t>(p, stream);
}

}  // namespace convlstm_cuda

void convlstm_gates_forward_cuda(const ConvLSTMGatesForward& p, void* stream) {
  using namespace convlstm_cuda;
  const char* who = "convlstm_gates_forward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  check_slots(p.slot_block, who);
  if (p.gates_x.ptr == nullptr || p.c.ptr == nullptr || p.h_new.ptr == nullptr ||
      p.c_new.ptr == nullptr)
    throw std::runtime_error(std::string(who) + ": gates_x, c, h_new and c_new are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype_pair(p.gate_dtype, p.state_dtype, who, [&](auto g, auto s) {
    launch_fwd<decltype(g), decltype(s)>(p, st);
  });
}

void convlstm_gates_backward_cuda(const ConvLSTMGatesBackward& p, void* stream) {
  using namespace convlstm_cuda;
  const char* who = "convlstm_gates_backward_cuda";
  if (empty_or_bad(p.B, p.C, p.S, who)) return;
  check_slots(p.slot_block, who);
  if (p.saved_gates.ptr == nullptr || p.c.ptr == nullptr || p.grad_gates.ptr == nullptr ||
      p.grad_c.ptr == nullptr)
    throw std::runtime_error(std::string(who) +
                             ": saved_gates, c, grad_gates and grad_c are required");
  const cudaStream_t st = static_cast<cudaStream_t>(stream);
  dispatch_dtype_pair(p.gate_dtype, p.state_dtype, who, [&](auto g, auto s) {
    launch_bwd<decltype(g), decltype(s)>(p, st);
  });
}

}  // namespace predkern
