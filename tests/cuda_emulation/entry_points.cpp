// The CPU kernels' entry points of the torch glue (csrc/<op>.cpp), answered by the CUDA kernels:
// linked in place of csrc/cpu/<op>.cpp, they make CPU tensors run csrc/cuda/*.cu under the
// emulated runtime (cuda_runtime.h here). The glue allocates the CUDA kernels' workspaces only for
// CUDA tensors, so the two that need one get it here, filled with NaN as uninitialized device
// memory may hold anything.
#define PREDKERN_WITH_CUDA 1  // declares the *_cuda entry points in the op headers

#include <torch/library.h>  // before cuda_runtime.h, whose __noinline__ would clash with libstdc++'s

#include <limits>
#include <vector>

#include "convlstm_gates.h"
#include "decoupling_loss.h"
#include "prednet_error.h"
#include "stlstm_memory.h"
#include "stlstm_output.h"

#include "cuda_runtime.h"

// The CUDA runtime functions the launchers call (declared by the CUDA headers): emulated launches
// throw on error instead of leaving one to be fetched.
extern "C" cudaError_t cudaGetLastError(void) { return cudaSuccess; }
extern "C" const char* cudaGetErrorString(cudaError_t) { return "no error"; }

namespace predkern {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void convlstm_gates_forward_cpu(const ConvLSTMGatesForward& p) { convlstm_gates_forward_cuda(p, nullptr); }
void convlstm_gates_backward_cpu(const ConvLSTMGatesBackward& p) { convlstm_gates_backward_cuda(p, nullptr); }
void stlstm_memory_forward_cpu(const STLSTMMemoryForward& p) { stlstm_memory_forward_cuda(p, nullptr); }
void stlstm_memory_backward_cpu(const STLSTMMemoryBackward& p) { stlstm_memory_backward_cuda(p, nullptr); }
void stlstm_output_forward_cpu(const STLSTMOutputForward& p) { stlstm_output_forward_cuda(p, nullptr); }
void stlstm_output_backward_cpu(const STLSTMOutputBackward& p) { stlstm_output_backward_cuda(p, nullptr); }
void prednet_error_backward_cpu(const PredNetErrorBackward& p) { prednet_error_backward_cuda(p, nullptr); }
void decoupling_loss_backward_cpu(const DecouplingLossBackward& p) { decoupling_loss_backward_cuda(p, nullptr); }

void decoupling_loss_forward_cpu(const DecouplingLossForward& p) {
  std::vector<double> row_abs_cos(static_cast<size_t>(p.N * p.C), kNaN);  // as the glue sizes it
  DecouplingLossForward q = p;
  q.row_abs_cos = row_abs_cos.data();
  decoupling_loss_forward_cuda(q, nullptr);
}

void prednet_error_forward_cpu(const PredNetErrorForward& p) {
  std::vector<double> partial;
  PredNetErrorForward q = p;
  if (p.e_mean != nullptr) {  // as the glue sizes it for CUDA
    partial.assign(static_cast<size_t>(p.N * prednet_error_chunks(p.C, p.S)), kNaN);
    q.partial = partial.data();
  }
  prednet_error_forward_cuda(q, nullptr);
}

}  // namespace predkern

// torch.ops.predkern_emulation.launches(): kernel launches emulated so far (the tests check that
// the ops ran through here).
TORCH_LIBRARY(predkern_emulation, m) {
  m.def("launches() -> int", []() -> int64_t { return pk_emu::launches(); });
}
