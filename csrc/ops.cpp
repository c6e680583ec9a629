// Schemas of every predkern op. Kernels and autograd register per op in csrc/<op>.cpp.
#include <torch/library.h>

TORCH_LIBRARY(predkern, m) {
  // Public op: SPEC.md section 1. Its Autograd kernel saves the activations' arguments (pre_act).
  m.def(
      "convlstm_gates(Tensor gates_x, Tensor c, Tensor? gates_h=None, Tensor? bias=None, "
      "Tensor? peephole=None, float forget_bias=0.0, str gate_order='ifgo', "
      "str gate_act='sigmoid') -> (Tensor, Tensor)");
  // The two halves the Autograd kernel calls; visible to torch.compile as graph nodes.
  m.def(
      "convlstm_gates_forward(Tensor gates_x, Tensor c, Tensor? gates_h, Tensor? bias, "
      "Tensor? peephole, float forget_bias, str gate_order, str gate_act) "
      "-> (Tensor h_new, Tensor c_new, Tensor pre_act)");
  m.def(
      "convlstm_gates_backward(Tensor? grad_h, Tensor? grad_c_new, Tensor pre_act, Tensor c, "
      "Tensor? peephole, ScalarType gate_dtype, str gate_order, str gate_act) "
      "-> (Tensor grad_gates, Tensor grad_c)");
}

#ifdef TORCH_EXTENSION_NAME
// Built as the Python module predkern._C: importing it runs the registrations above.
#include <Python.h>
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module);
}
#endif
