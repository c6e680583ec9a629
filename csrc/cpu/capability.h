// CPU kernels are compiled once per instruction set, as PyTorch does its own (DESIGN.md):
// each csrc/cpu/<op>.cpp builds as itself (DEFAULT) and again from capability_avx2.cpp and
// capability_avx512.cpp, which set CPU_CAPABILITY before including it. At run time the variant
// matching torch's own choice (at::get_cpu_capability(), so ATEN_CPU_CAPABILITY applies) is called.
#pragma once

#ifndef CPU_CAPABILITY
#define CPU_CAPABILITY DEFAULT
#define PREDKERN_CPU_DEFAULT_BUILD 1
#endif

// The extra variants need GCC's `#pragma GCC target` on x86-64; elsewhere only DEFAULT exists.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define PREDKERN_CPU_HAS_AVX_VARIANTS 1
#endif

namespace predkern::cpu {

enum class Capability { Default, Avx2, Avx512 };
Capability capability();  // cached; defined in capability.cpp

}  // namespace predkern::cpu

// Calls ns::fn(args) for the variant chosen at run time.
#ifdef PREDKERN_CPU_HAS_AVX_VARIANTS
#define PREDKERN_CPU_DISPATCH(fn, ...)                                   \
  switch (::predkern::cpu::capability()) {                               \
    case ::predkern::cpu::Capability::Avx512: return AVX512::fn(__VA_ARGS__); \
    case ::predkern::cpu::Capability::Avx2: return AVX2::fn(__VA_ARGS__);     \
    default: return DEFAULT::fn(__VA_ARGS__);                            \
  }
#else
#define PREDKERN_CPU_DISPATCH(fn, ...) return DEFAULT::fn(__VA_ARGS__);
#endif

// The run-time dispatchers predkern::<op>_forward_cpu / <op>_backward_cpu of csrc/<op>.h, placed
// once, at the end of the DEFAULT build of csrc/cpu/<op>.cpp.
#ifdef PREDKERN_CPU_HAS_AVX_VARIANTS
#define PREDKERN_CPU_DECLARE_VARIANTS(op, Fwd, Bwd)               \
  namespace predkern::cpu::AVX2 {                                 \
  void op##_forward(const Fwd& p);                                \
  void op##_backward(const Bwd& p);                               \
  }                                                               \
  namespace predkern::cpu::AVX512 {                               \
  void op##_forward(const Fwd& p);                                \
  void op##_backward(const Bwd& p);                               \
  }
#else
#define PREDKERN_CPU_DECLARE_VARIANTS(op, Fwd, Bwd)
#endif

#define PREDKERN_CPU_DISPATCHERS(op, Fwd, Bwd)                                               \
  PREDKERN_CPU_DECLARE_VARIANTS(op, Fwd, Bwd)                                                \
  namespace predkern {                                                                       \
  void op##_forward_cpu(const Fwd& p) {                                                      \
    using namespace cpu;                                                                     \
    PREDKERN_CPU_DISPATCH(op##_forward, p)                                                   \
  }                                                                                          \
  void op##_backward_cpu(const Bwd& p) {                                                     \
    using namespace cpu;                                                                     \
    PREDKERN_CPU_DISPATCH(op##_backward, p)                                                  \
  }                                                                                          \
  }
