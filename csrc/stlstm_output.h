// Kernel-facing description of one stlstm_output call (PredRNN ST-LSTM stage 2, SPEC.md section 2):
//   h' = sig(x_o + h_o + o_conv) * tanh(last_conv)
// with x_o = block 6 of x_cat (B, 7C, S) and h_o = block 3 of h_cat (B, 4C, S), read in place.
// All tensors share one dtype. See convlstm_gates.h for the View3 conventions.
#pragma once
#include "convlstm_gates.h"

namespace predkern {

struct STLSTMOutputForward {
  int64_t B = 0, C = 0, S = 0;
  DType dtype = DType::Float32;
  View3 x_cat, h_cat, o_conv, last_conv;
  View3 h_new;      // output (B, C, S)
  View3 o_gate;     // optional output (B, C, S): sig(x_o + h_o + o_conv), saved for backward
  View3 tanh_last;  // optional output (B, C, S): tanh(last_conv), saved for backward (saving it
                    // rather than last_conv frees the (B, 2C) buffer of a merged conv_o/conv_last)
};

struct STLSTMOutputBackward {
  int64_t B = 0, C = 0, S = 0;
  DType dtype = DType::Float32;
  View3 grad_h, o_gate, tanh_last;
  View3 grad_x_cat;      // output (B, 7C, S): block 6 = d (x_o + h_o + o_conv), blocks 0..5 zero
  View3 grad_h_cat;      // output (B, 4C, S): block 3 = the same, blocks 0..2 zero
  View3 grad_o_conv;     // output (B, C, S) = the same
  View3 grad_last_conv;  // output (B, C, S)
};

void stlstm_output_forward_cpu(const STLSTMOutputForward& p);
void stlstm_output_backward_cpu(const STLSTMOutputBackward& p);
#ifdef PREDKERN_WITH_CUDA
void stlstm_output_forward_cuda(const STLSTMOutputForward& p, void* stream);
void stlstm_output_backward_cuda(const STLSTMOutputBackward& p, void* stream);
#endif

}  // namespace predkern
