// convlstm_gates for torch: argument checks, 3-D views, output allocation, autograd, and the CPU /
// CUDA kernels of the schemas in ops.cpp. The math lives in cpu/ and cuda/ (SPEC.md section 1).
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include <array>
#include <string>

#include "common.h"
#include "convlstm_gates.h"

namespace predkern {
namespace {

constexpr const char* kOp = "convlstm_gates";

// slot_block[k]: the block of gates_x holding gate k of "ifgo".
std::array<int, 4> slot_blocks(const std::string& order) {
  std::array<int, 4> slot_block{};
  bool ok = order.size() == 4;
  for (int k = 0; ok && k < 4; ++k) {
    const auto pos = order.find("ifgo"[k]);
    ok = pos != std::string::npos;
    slot_block[k] = static_cast<int>(pos);
  }
  TORCH_CHECK_VALUE(ok, "convlstm_gates: `gate_order` must be a permutation of 'ifgo' (e.g. 'ifgo', "
                    "'ifog', 'igfo'), got '", order, "'");
  return slot_block;
}

GateAct gate_act_of(const std::string& act) {
  if (act == "sigmoid") return GateAct::Sigmoid;
  TORCH_CHECK_VALUE(act == "hard_sigmoid",
                    "convlstm_gates: `gate_act` must be 'sigmoid' or 'hard_sigmoid', got '", act, "'");
  return GateAct::HardSigmoid;
}

// Whether saved_gates is in the gates' own dtype, as eager keeps its activations (under autocast a
// float32 copy would double what a step saves), or in the compute dtype: with hard_sigmoid, whose
// arguments rounded to a half could land on the other side of a kink (an O(1) wrong gradient),
// and with peepholes, whose gradient sums products over the batch that a rounded gate would put
// past twice eager's error (tests/test_convlstm_gates.py).
bool saved_gates_in_gate_dtype(GateAct act, bool peephole) {
  return act == GateAct::Sigmoid && !peephole;
}

at::ScalarType saved_gates_dtype(at::ScalarType gate_dtype, GateAct act, bool peephole) {
  return saved_gates_in_gate_dtype(act, peephole) ? gate_dtype : at::toOpMathType(gate_dtype);
}

// SPEC.md section 5: bad input raises before any kernel runs, naming the argument.
// gate_dtype: the gates' dtype where gx is not the gates (the backward passes saved_gates).
void check_inputs(const Tensor& gx, const Tensor& c, const OptTensor& gh, const OptTensor& bias,
                  const OptTensor& peep, std::optional<at::ScalarType> gate_dtype = std::nullopt) {
  check_tensor(kOp, gx, "gates_x", gx);
  const int64_t C = check_stacked(kOp, gx, "gates_x", 4, "gates");
  const auto state_shape = with_channels(gx, C);
  check_tensor(kOp, c, "c", gx);
  check_shape(kOp, c, "c", state_shape, "(B, C, *spatial) with C = gates_x.size(1) / 4");
  check_state_dtype(kOp, c, "c", gate_dtype.value_or(gx.scalar_type()));
  if (gh) {
    check_tensor(kOp, *gh, "gates_h", gx);
    check_shape(kOp, *gh, "gates_h", gx.sizes(), "gates_x.shape");
    check_dtype(kOp, *gh, "gates_h", gx.scalar_type(), "gates_x");
  }
  if (bias) {
    check_tensor(kOp, *bias, "bias", gx);
    check_shape(kOp, *bias, "bias", {gx.size(1)}, "(4*C,)");
    check_dtype(kOp, *bias, "bias", c.scalar_type(), "c");
  }
  if (peep) {
    check_tensor(kOp, *peep, "peephole", gx);
    auto peep_shape = state_shape;
    peep_shape[0] = 3;
    check_shape(kOp, *peep, "peephole", peep_shape, "(3, C, *spatial)");
    check_dtype(kOp, *peep, "peephole", c.scalar_type(), "c");
  }
}

std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& gx, const Tensor& c,
                                                const OptTensor& gh, const OptTensor& bias,
                                                const OptTensor& peep, double forget_bias,
                                                const std::string& gate_order,
                                                const std::string& gate_act, bool save) {
  check_inputs(gx, c, gh, bias, peep);
  ConvLSTMGatesForward p;
  std::copy_n(slot_blocks(gate_order).begin(), 4, p.slot_block);
  p.act = gate_act_of(gate_act);
  p.forget_bias = forget_bias;
  p.gate_dtype = dtype_of(gx.scalar_type());
  p.state_dtype = dtype_of(c.scalar_type());
  p.B = gx.size(0);
  p.C = gx.size(1) / 4;
  p.S = spatial_numel(gx);

  // Outputs follow gates_x's memory format (SPEC.md section 5).
  const auto h_new = empty_like_format(c.sizes(), gx, gx.scalar_type());
  const auto c_new = empty_like_format(c.sizes(), gx, c.scalar_type());
  const bool has_peep = peep && peep->defined();
  p.saved_in_gate_dtype = saved_gates_in_gate_dtype(p.act, has_peep);
  const auto saved_gates =
      save ? empty_like_format(gx.sizes(), gx, saved_gates_dtype(gx.scalar_type(), p.act, has_peep)) : Tensor();
  if (h_new.numel() == 0) return {h_new, c_new, saved_gates};

  Tensor k[9];  // keeps the 3-D views (and any copy) alive while the kernel runs
  p.gates_x = view3(gx, p.S, k[0]);
  p.gates_h = view3(gh, p.S, k[1]);
  p.c = view3(c, p.S, k[2]);
  p.peephole = view3(peep, p.S, k[3]);
  if (bias) p.bias = {bias->data_ptr(), 0, bias->stride(0), 0};
  p.h_new = view3(h_new, p.S, k[4]);
  p.c_new = view3(c_new, p.S, k[5]);
  if (save) p.saved_gates = view3(saved_gates, p.S, k[6]);

  if (gx.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(gx.device());
    convlstm_gates_forward_cuda(p, current_stream(gx));
#endif
  } else {
    convlstm_gates_forward_cpu(p);
  }
  return {h_new, c_new, saved_gates};
}

std::tuple<Tensor, Tensor> backward_impl(const OptTensor& grad_h, const OptTensor& grad_c_new,
                                         const Tensor& saved_gates, const Tensor& c,
                                         const OptTensor& peep, at::ScalarType gate_dtype,
                                         const std::string& gate_order,
                                         const std::string& gate_act) {
  // saved_gates, c and peephole come from the forward; the rest is checked against them.
  check_inputs(saved_gates, c, std::nullopt, std::nullopt, peep, gate_dtype);
  const bool has_peep = peep && peep->defined();
  check_dtype(kOp, saved_gates, "saved_gates", saved_gates_dtype(gate_dtype, gate_act_of(gate_act), has_peep),
              "the saved gates (see saved_gates_dtype)");
  if (grad_h) {
    check_tensor(kOp, *grad_h, "grad_h", saved_gates);
    check_shape(kOp, *grad_h, "grad_h", c.sizes(), "c.shape");
    check_dtype(kOp, *grad_h, "grad_h", gate_dtype, "h_new");
  }
  if (grad_c_new) {
    check_tensor(kOp, *grad_c_new, "grad_c_new", saved_gates);
    check_shape(kOp, *grad_c_new, "grad_c_new", c.sizes(), "c.shape");
    check_dtype(kOp, *grad_c_new, "grad_c_new", c.scalar_type(), "c_new");
  }
  ConvLSTMGatesBackward p;
  std::copy_n(slot_blocks(gate_order).begin(), 4, p.slot_block);
  p.act = gate_act_of(gate_act);
  p.saved_in_gate_dtype = saved_gates_in_gate_dtype(p.act, has_peep);
  p.gate_dtype = dtype_of(gate_dtype);
  p.state_dtype = dtype_of(c.scalar_type());
  p.B = saved_gates.size(0);
  p.C = saved_gates.size(1) / 4;
  p.S = spatial_numel(saved_gates);

  const auto grad_gates = empty_like_format(saved_gates.sizes(), saved_gates, gate_dtype);
  const auto grad_c = empty_like_format(c.sizes(), saved_gates, c.scalar_type());
  if (grad_c.numel() == 0) return {grad_gates, grad_c};

  Tensor k[7];
  p.grad_h = view3(grad_h, p.S, k[0]);
  p.grad_c_new = view3(grad_c_new, p.S, k[1]);
  p.saved_gates = view3(saved_gates, p.S, k[2]);
  p.c = view3(c, p.S, k[3]);
  p.peephole = view3(peep, p.S, k[4]);
  p.grad_gates = view3(grad_gates, p.S, k[5]);
  p.grad_c = view3(grad_c, p.S, k[6]);

  if (saved_gates.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(saved_gates.device());
    convlstm_gates_backward_cuda(p, current_stream(saved_gates));
#endif
  } else {
    convlstm_gates_backward_cpu(p);
  }
  return {grad_gates, grad_c};
}

std::tuple<Tensor, Tensor, Tensor> forward_kernel(const Tensor& gx, const Tensor& c,
                                                  const OptTensor& gh, const OptTensor& bias,
                                                  const OptTensor& peep, double forget_bias,
                                                  c10::string_view gate_order,
                                                  c10::string_view gate_act) {
  return forward_impl(gx, c, gh, bias, peep, forget_bias, std::string(gate_order),
                      std::string(gate_act), /*save=*/true);
}

// The public op below autograd (inference): no pre-activations are written.
std::tuple<Tensor, Tensor> inference_kernel(const Tensor& gx, const Tensor& c, const OptTensor& gh,
                                            const OptTensor& bias, const OptTensor& peep,
                                            double forget_bias, c10::string_view gate_order,
                                            c10::string_view gate_act) {
  auto [h_new, c_new, unused] = forward_impl(gx, c, gh, bias, peep, forget_bias,
                                             std::string(gate_order), std::string(gate_act),
                                             /*save=*/false);
  return {h_new, c_new};
}

std::tuple<Tensor, Tensor> backward_kernel(const OptTensor& grad_h, const OptTensor& grad_c_new,
                                           const Tensor& saved_gates, const Tensor& c,
                                           const OptTensor& peep, at::ScalarType gate_dtype,
                                           c10::string_view gate_order,
                                           c10::string_view gate_act) {
  return backward_impl(grad_h, grad_c_new, saved_gates, c, peep, gate_dtype, std::string(gate_order),
                       std::string(gate_act));
}

// The autograd node of convlstm_gates, as PyTorch's generated code writes one: a
// torch::autograd::Function (a context map of IValues, per-input metadata, generic output
// wrapping) cost 3 us of a 4.5 us call on tiny tensors, three times this node.
// Its edges are the five inputs in order, an absent optional one an invalid edge.
struct ConvLSTMGatesBackward : public torch::autograd::Node {
  // Saved: the gates (see convlstm_gates.h) and c (5C per element; eager saves ~6C), plus c_new
  // when the peephole W_co needs it.
  torch::autograd::SavedVariable saved_gates, c, peephole, c_new;
  at::ScalarType gate_dtype;
  std::string gate_order, gate_act;

  std::string name() const override { return "ConvLSTMGatesBackward"; }

  void release_variables() override {
    saved_gates.reset_data();
    c.reset_data();
    peephole.reset_data();
    c_new.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::convlstm_gates_backward", "")
                               .typed<decltype(backward_kernel)>();
    enum { kGatesX, kC, kGatesH, kBias, kPeephole };
    torch::autograd::variable_list out(5);
    // Undefined incoming gradients stay undefined: the kernel treats them as zero, unread.
    if (!grads[0].defined() && !grads[1].defined()) return out;
    const auto self = getptr();
    const auto gates = saved_gates.unpack(self), c_in = c.unpack(self), peep = peephole.unpack(self);
    auto [grad_gates, grad_c] = op.call(defined_or_null(grads[0]), defined_or_null(grads[1]), gates, c_in,
                                        defined_or_null(peep), gate_dtype, gate_order, gate_act);
    out[kGatesX] = grad_gates;
    out[kC] = grad_c;
    if (next_edge(kGatesH).is_valid()) out[kGatesH] = grad_gates;
    if (task_should_compute_output(kBias)) {
      std::vector<int64_t> dims{0};
      for (int64_t d = 2; d < grad_gates.dim(); ++d) dims.push_back(d);
      out[kBias] = at::sum(grad_gates, dims, false, c_in.scalar_type());
    }
    if (task_should_compute_output(kPeephole)) {
      // d/dW_c{i,f,o} = sum over batch of dz_{i,f,o} * (c, c, c_new). Without a gradient on h,
      // W_co's is zero: eager never runs o's path (0 * c_new would turn inf or NaN into NaN).
      // Products and sums in the compute dtype, rounded once (a half product rounded before the
      // sum over batch adds its error to terms that may cancel).
      const auto C = gates.sym_size(1) / 4;
      const auto slot = slot_blocks(gate_order);
      const auto up = [](const Tensor& t) { return t.to(at::toOpMathType(t.scalar_type())); };
      auto dz = [&](int k) { return up(grad_gates.narrow_symint(1, C * slot[k], C)); };
      const auto d_co = grads[0].defined() ? (dz(kO) * up(c_new.unpack(self))).sum(0)
                                           : at::zeros_like(peep.select(0, 2));
      out[kPeephole] = at::stack({(dz(kI) * up(c_in)).sum(0), (dz(kF) * up(c_in)).sum(0), d_co})
                           .to(peep.scalar_type());
    }
    return out;
  }
};

std::tuple<Tensor, Tensor> autograd_kernel(const Tensor& gx, const Tensor& c, const OptTensor& gh,
                                           const OptTensor& bias, const OptTensor& peep,
                                           double forget_bias, c10::string_view gate_order,
                                           c10::string_view gate_act) {
  check_no_tangents("convlstm_gates", has_tangent(gx) || has_tangent(c) || has_tangent(gh) ||
                                          has_tangent(bias) || has_tangent(peep));
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (gx.requires_grad() || c.requires_grad() || requires_grad(gh) ||
                           requires_grad(bias) || requires_grad(peep));
  if (!needs_grad) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::convlstm_gates", "")
                               .typed<decltype(inference_kernel)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(gx, c, gh, bias, peep, forget_bias, gate_order, gate_act);
  }
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("predkern::convlstm_gates_forward", "")
                                     .typed<decltype(forward_kernel)>();
  auto [h_new, c_new, saved_gates] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(gx, c, gh, bias, peep, forget_bias, gate_order, gate_act);
  }();
  const auto node = c10::make_intrusive<ConvLSTMGatesBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(gx, c, gh.value_or(Tensor()),
                                                           bias.value_or(Tensor()), peep.value_or(Tensor())));
  node->saved_gates = torch::autograd::SavedVariable(saved_gates, /*is_output=*/false);
  node->c = torch::autograd::SavedVariable(c, false);
  if (peep) node->peephole = torch::autograd::SavedVariable(*peep, false);
  node->gate_dtype = gx.scalar_type();
  node->gate_order = std::string(gate_order);
  node->gate_act = std::string(gate_act);
  torch::autograd::set_history(h_new, node);
  torch::autograd::set_history(c_new, node);
  if (peep) node->c_new = torch::autograd::SavedVariable(c_new, /*is_output=*/true);  // after set_history
  return {h_new, c_new};
}

}  // namespace

TORCH_LIBRARY_IMPL(predkern, Autograd, m) { m.impl("convlstm_gates", &autograd_kernel); }

TORCH_LIBRARY_IMPL(predkern, CPU, m) {
  m.impl("convlstm_gates", &inference_kernel);
  m.impl("convlstm_gates_forward", &forward_kernel);
  m.impl("convlstm_gates_backward", &backward_kernel);
}

// Sparse inputs reach these kernels only to be refused by check_inputs, naming the argument.
TORCH_LIBRARY_IMPL(predkern, SparseCPU, m) {
  m.impl("convlstm_gates", &inference_kernel);
  m.impl("convlstm_gates_forward", &forward_kernel);
}

#ifdef PREDKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(predkern, SparseCUDA, m) {
  m.impl("convlstm_gates", &inference_kernel);
  m.impl("convlstm_gates_forward", &forward_kernel);
}

TORCH_LIBRARY_IMPL(predkern, CUDA, m) {
  m.impl("convlstm_gates", &inference_kernel);
  m.impl("convlstm_gates_forward", &forward_kernel);
  m.impl("convlstm_gates_backward", &backward_kernel);
}
#endif

}  // namespace predkern
