// Recompiles every CPU kernel for AVX512 (the instruction subset PyTorch's own AVX512 kernels use).
// Same condition as PREDKERN_CPU_HAS_AVX_VARIANTS in capability.h, which must not be included first.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include "cpu/capability_prelude.h"  // before the pragma: see there
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")
// The pragma enables the instructions but not the feature macros that sleef.h and ATen test.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "cpu/convlstm_gates.cpp"
#include "cpu/decoupling_loss.cpp"
#include "cpu/prednet_error.cpp"
#include "cpu/stlstm_memory.cpp"
#include "cpu/stlstm_output.cpp"
#endif
