// Kernel-facing description of one stlstm_memory call (PredRNN ST-LSTM stage 1, SPEC.md section 2),
// shared by the CPU and CUDA kernels; plain C++, see convlstm_gates.h for the View3 conventions.
//
//   x_cat (B, 7C, S): blocks i, f, g, i', f', g', o      h_cat (B, 4C, S): i, f, g, o
//   m_cat (B, 3C, S): blocks i', f', g'                   c, m (B, C, S)
//   i = sig(x_i + h_i)   f = sig(x_f + h_f + forget_bias)   g = tanh(x_g + h_g)     c' = f c + i g
//   i'= sig(x_i'+ m_i')  f'= sig(x_f'+ m_f'+ forget_bias)   g'= tanh(x_g'+ m_g')    m' = f'm + i'g'
//   mem (B, 2C, S) = [c', m'];  delta_c = i g;  delta_m = i' g'
#pragma once
#include "convlstm_gates.h"

namespace predkern {

// Slots of gates (B, 6C, S): the six gate values, after their activations. Saving the values, not
// their arguments, spares the backward six exp and divisions per element: sigmoid' = y (1 - y)
// and tanh' = 1 - y^2 need nothing else.
enum STLSTMSlot : int { kSI = 0, kSF = 1, kSG = 2, kSIm = 3, kSFm = 4, kSGm = 5 };

struct STLSTMMemoryForward {
  int64_t B = 0, C = 0, S = 0;
  DType gate_dtype = DType::Float32;   // x_cat, h_cat, m_cat, delta_c, delta_m, gates
  DType state_dtype = DType::Float32;  // c, m, mem
  double forget_bias = 1.0;
  View3 x_cat, h_cat, m_cat, c, m;
  View3 mem;                // output (B, 2C, S): c' in channels [0, C), m' in [C, 2C)
  View3 delta_c, delta_m;   // optional outputs (B, C, S)
  View3 gates;              // optional output (B, 6C, S), slot order, saved for backward
};

struct STLSTMMemoryBackward {
  int64_t B = 0, C = 0, S = 0;
  DType gate_dtype = DType::Float32;
  DType state_dtype = DType::Float32;
  View3 grad_mem;                    // (B, 2C, S) state dtype; optional
  View3 grad_delta_c, grad_delta_m;  // (B, C, S) gate dtype; each optional
  View3 gates, c, m;                 // as saved by the forward
  View3 grad_x_cat;  // output (B, 7C, S): blocks 0..5 the six gate grads, block 6 (o) zero
  View3 grad_h_cat;  // output (B, 4C, S): blocks 0..2 = grads of i, f, g; block 3 (o) zero
  View3 grad_m_cat;  // output (B, 3C, S): grads of i', f', g'
  View3 grad_c, grad_m;  // outputs (B, C, S) state dtype
};

void stlstm_memory_forward_cpu(const STLSTMMemoryForward& p);
void stlstm_memory_backward_cpu(const STLSTMMemoryBackward& p);
#ifdef PREDKERN_WITH_CUDA
void stlstm_memory_forward_cuda(const STLSTMMemoryForward& p, void* stream);
void stlstm_memory_backward_cuda(const STLSTMMemoryBackward& p, void* stream);
#endif

}  // namespace predkern
