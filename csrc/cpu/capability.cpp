#include "cpu/capability.h"

#include <ATen/Version.h>

#include <string>

namespace predkern::cpu {

Capability capability() {
  static const Capability cap = [] {
    const std::string name = at::get_cpu_capability();
#ifdef PREDKERN_CPU_HAS_AVX_VARIANTS
    if (name == "AVX512") return Capability::Avx512;
    if (name == "AVX2") return Capability::Avx2;
#endif
    return Capability::Default;
  }();
  return cap;
}

}  // namespace predkern::cpu
