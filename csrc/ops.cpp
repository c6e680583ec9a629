// Schemas of every predkern op. Kernels and autograd register per op in csrc/<op>.cpp.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

TORCH_LIBRARY(predkern, m) {
  // Public op: SPEC.md section 1. Its Autograd kernel saves the gates (saved_gates, convlstm_gates.h).
  m.def(
      "convlstm_gates(Tensor gates_x, Tensor c, Tensor? gates_h=None, Tensor? bias=None, "
      "Tensor? peephole=None, float forget_bias=0.0, str gate_order='ifgo', "
      "str gate_act='sigmoid') -> (Tensor, Tensor)");
  // The two halves the Autograd kernel calls; visible to torch.compile as graph nodes.
  m.def(
      "convlstm_gates_forward(Tensor gates_x, Tensor c, Tensor? gates_h, Tensor? bias, "
      "Tensor? peephole, float forget_bias, str gate_order, str gate_act) "
      "-> (Tensor h_new, Tensor c_new, Tensor saved_gates)");
  m.def(
      "convlstm_gates_backward(Tensor? grad_h, Tensor? grad_c_new, Tensor saved_gates, Tensor c, "
      "Tensor? peephole, ScalarType gate_dtype, str gate_order, str gate_act) "
      "-> (Tensor grad_gates, Tensor grad_c)");

  // PredRNN ST-LSTM stage 1 (SPEC.md section 2). Without return_deltas the deltas are empty.
  // Its Autograd kernel saves the six gates i, f, g, i', f', g' (their derivatives need no more).
  m.def(
      "stlstm_memory(Tensor x_cat, Tensor h_cat, Tensor m_cat, Tensor c, Tensor m, "
      "float forget_bias=1.0, bool return_deltas=True) -> (Tensor mem, Tensor delta_c, "
      "Tensor delta_m)");
  m.def(
      "stlstm_memory_forward(Tensor x_cat, Tensor h_cat, Tensor m_cat, Tensor c, Tensor m, "
      "float forget_bias, bool return_deltas) -> (Tensor mem, Tensor delta_c, Tensor delta_m, "
      "Tensor gates)");
  m.def(
      "stlstm_memory_backward(Tensor? grad_mem, Tensor? grad_delta_c, Tensor? grad_delta_m, "
      "Tensor gates, Tensor c, Tensor m, ScalarType gate_dtype) -> (Tensor grad_x_cat, "
      "Tensor grad_h_cat, Tensor grad_m_cat, Tensor grad_c, Tensor grad_m)");

  // PredRNN ST-LSTM stage 2 (SPEC.md section 2).
  m.def("stlstm_output(Tensor x_cat, Tensor h_cat, Tensor o_conv, Tensor last_conv) -> Tensor");
  m.def(
      "stlstm_output_forward(Tensor x_cat, Tensor h_cat, Tensor o_conv, Tensor last_conv) "
      "-> (Tensor h_new, Tensor o_gate, Tensor tanh_last)");
  m.def(
      "stlstm_output_backward(Tensor grad_h, Tensor o_gate, Tensor tanh_last) -> (Tensor grad_x_cat, "
      "Tensor grad_h_cat, Tensor grad_o_conv, Tensor grad_last_conv)");

  // PredRNN-V2 memory decoupling loss (SPEC.md section 3). row_coefs: (N*C, 4) float64, the
  // per-row coefficients of the element-wise backward.
  m.def("decoupling_loss(Tensor delta_c, Tensor delta_m) -> Tensor");
  m.def("decoupling_loss_forward(Tensor delta_c, Tensor delta_m) -> (Tensor loss, Tensor row_coefs)");
  m.def(
      "decoupling_loss_backward(Tensor grad_loss, Tensor delta_c, Tensor delta_m, Tensor row_coefs) "
      "-> (Tensor grad_delta_c, Tensor grad_delta_m)");

  // PredNet error units (SPEC.md section 4). Without return_mean, e_mean is empty. The backward
  // recomputes everything from the inputs a and a_hat.
  m.def(
      "prednet_error(Tensor a, Tensor a_hat, bool relu_a_hat=True, float? clip_max=None, "
      "str first='pred', bool return_mean=False) -> (Tensor e, Tensor a_hat_out, Tensor e_mean)");
  m.def(
      "prednet_error_backward(Tensor? grad_e, Tensor? grad_a_hat_out, Tensor? grad_e_mean, "
      "Tensor a, Tensor a_hat, bool relu_a_hat, float? clip_max, str first) -> (Tensor grad_a, "
      "Tensor grad_a_hat)");
}

// The forward and backward halves have no derivative of their own (the public ops' autograd is
// theirs). Differentiating through one, as a double backward does (a gradient penalty: backward
// with create_graph=True, then backward again through the gradient), raises here; without this
// PyTorch's default fallback only warned and took the halves as constants: a wrong gradient.
TORCH_LIBRARY_IMPL(predkern, Autograd, m) {
  for (const char* half :
       {"convlstm_gates_forward", "convlstm_gates_backward", "stlstm_memory_forward",
        "stlstm_memory_backward", "stlstm_output_forward", "stlstm_output_backward",
        "decoupling_loss_forward", "decoupling_loss_backward", "prednet_error_backward"})
    m.impl(half, torch::autograd::autogradNotImplementedFallback());
}

#ifdef TORCH_EXTENSION_NAME
// Built as the Python module predkern._C: importing it runs the registrations above.
#include <Python.h>
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
