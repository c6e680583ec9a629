// Kernel-facing description of one convlstm_gates call, shared by the CPU and CUDA kernels.
// Plain C++ with no torch headers, so the CUDA sources compile with a bare nvcc (DESIGN.md).
//
// Every tensor is seen as a 3-D strided view (B, k*C, S): batch, channels, flattened space.
// Strides are in elements and may be 0 (expanded views) or anything else (slices, channels_last).
// Outputs never alias inputs (SPEC.md section 5); slot_block is a permutation of 0..3.
#pragma once
#include <cstdint>

namespace predkern {

enum class DType : int { Float32 = 0, Float64 = 1, Float16 = 2, BFloat16 = 3 };
enum class GateAct : int { Sigmoid = 0, HardSigmoid = 1 };

struct View3 {
  void* ptr = nullptr;  // nullptr: the optional tensor is absent
  int64_t sb = 0, sc = 0, ss = 0;  // strides of dims (batch | gate block, channel, space)
};

// Canonical gate slots; `slot_block[k]` is the block of gates_x holding slot k (from gate_order).
enum GateSlot : int { kI = 0, kF = 1, kG = 2, kO = 3 };

struct ConvLSTMGatesForward {
  int64_t B = 0, C = 0, S = 0;
  DType gate_dtype = DType::Float32;   // gates_x, gates_h, h_new
  DType state_dtype = DType::Float32;  // c, c_new, bias, peephole
  GateAct act = GateAct::Sigmoid;
  int slot_block[4] = {0, 1, 2, 3};
  double forget_bias = 0.0;
  View3 gates_x, gates_h;  // (B, 4C, S); gates_h optional
  View3 c;                 // (B, C, S)
  View3 bias;              // (4C,) in gates_x's block order; seen as sc = stride, sb = ss = 0
  View3 peephole;          // (3, C, S): sb is the stride between W_ci, W_cf, W_co
  View3 h_new, c_new;      // outputs (B, C, S)
  View3 saved_gates;       // optional output (B, 4C, S), slot order i, f, g, o, saved for backward:
                           // what each derivative needs, the values of sigmoid and tanh gates
                           // (y (1 - y), 1 - y^2: no exp in the backward) and the arguments of
                           // hard_sigmoid gates (the side of a kink). In the gate dtype where
                           // saved_in_gate_dtype, else in the compute dtype (float32 for half)
  bool saved_in_gate_dtype = false;  // see saved_gates_in_gate_dtype in convlstm_gates.cpp
};

struct ConvLSTMGatesBackward {
  int64_t B = 0, C = 0, S = 0;
  DType gate_dtype = DType::Float32;
  DType state_dtype = DType::Float32;
  GateAct act = GateAct::Sigmoid;
  int slot_block[4] = {0, 1, 2, 3};
  View3 grad_h, grad_c_new;  // (B, C, S) in the dtypes of h_new (gate) and c_new (state);
                             // either may be absent (no gradient reached it)
  View3 saved_gates;         // (B, 4C, S) slot order, as saved by the forward
  bool saved_in_gate_dtype = false;  // as in the forward
  View3 c;                   // (B, C, S)
  View3 peephole;            // (3, C, S) optional
  View3 grad_gates;          // output (B, 4C, S) in gates_x's block order (gate dtype)
  View3 grad_c;              // output (B, C, S) (state dtype)
};

void convlstm_gates_forward_cpu(const ConvLSTMGatesForward& p);
void convlstm_gates_backward_cpu(const ConvLSTMGatesBackward& p);
#ifdef PREDKERN_WITH_CUDA
// `stream` is a cudaStream_t; kept opaque here so this header needs no CUDA include.
void convlstm_gates_forward_cuda(const ConvLSTMGatesForward& p, void* stream);
void convlstm_gates_backward_cuda(const ConvLSTMGatesBackward& p, void* stream);
#endif

}  // namespace predkern
