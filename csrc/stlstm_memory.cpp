// stlstm_memory for torch: checks, 3-D views, outputs, autograd, and the CPU / CUDA kernels of the
// schemas in ops.cpp. The math lives in cpu/ and cuda/ (SPEC.md section 2, stage 1).
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common.h"
#include "stlstm_memory.h"

namespace predkern {
namespace {

constexpr const char* kOp = "stlstm_memory";

void check_inputs(const Tensor& x, const Tensor& h, const Tensor& mc, const Tensor& c,
                  const Tensor& m) {
  check_tensor(kOp, x, "x_cat", x);
  const int64_t C = check_stacked(kOp, x, "x_cat", 7, "blocks (i, f, g, i', f', g', o)");
  check_tensor(kOp, h, "h_cat", x);
  check_shape(kOp, h, "h_cat", with_channels(x, 4 * C), "(B, 4*C, *spatial)");
  check_dtype(kOp, h, "h_cat", x.scalar_type(), "x_cat");
  check_tensor(kOp, mc, "m_cat", x);
  check_shape(kOp, mc, "m_cat", with_channels(x, 3 * C), "(B, 3*C, *spatial)");
  check_dtype(kOp, mc, "m_cat", x.scalar_type(), "x_cat");
  const auto state_shape = with_channels(x, C);
  check_tensor(kOp, c, "c", x);
  check_shape(kOp, c, "c", state_shape, "(B, C, *spatial) with C = x_cat.size(1) / 7");
  check_state_dtype(kOp, c, "c", x.scalar_type());
  check_tensor(kOp, m, "m", x);
  check_shape(kOp, m, "m", state_shape, "(B, C, *spatial) with C = x_cat.size(1) / 7");
  check_dtype(kOp, m, "m", c.scalar_type(), "c");
}

std::tuple<Tensor, Tensor, Tensor, Tensor> forward_impl(const Tensor& x, const Tensor& h,
                                                        const Tensor& mc, const Tensor& c,
                                                        const Tensor& m, double forget_bias,
                                                        bool return_deltas, bool save) {
  check_inputs(x, h, mc, c, m);
  STLSTMMemoryForward p;
  p.B = x.size(0);
  p.C = x.size(1) / 7;
  p.S = spatial_numel(x);
  p.gate_dtype = dtype_of(x.scalar_type());
  p.state_dtype = dtype_of(c.scalar_type());
  p.forget_bias = forget_bias;
  // Outputs follow x_cat's memory format; c' and m' go straight into one (B, 2C) buffer.
  const auto mem = empty_like_format(with_channels(x, 2 * p.C), x, c.scalar_type());
  // without return_deltas: empty placeholders (a schema cannot return None)
  const auto delta = [&] {
    return return_deltas ? empty_like_format(c.sizes(), x, x.scalar_type()) : at::empty({0}, x.options());
  };
  const auto delta_c = delta(), delta_m = delta();
  // The gates saved for backward are in the gates' dtype, as eager saves its activations: under
  // autocast the float32 state would otherwise double their bytes, the bulk of what a step saves.
  const auto gates =
      save ? empty_like_format(with_channels(x, 6 * p.C), x, x.scalar_type()) : at::empty({0}, x.options());
  if (mem.numel() == 0) return {mem, delta_c, delta_m, gates};

  Tensor k[9];  // keeps the 3-D views (and any copy) alive while the kernel runs
  p.x_cat = view3(x, p.S, k[0]);
  p.h_cat = view3(h, p.S, k[1]);
  p.m_cat = view3(mc, p.S, k[2]);
  p.c = view3(c, p.S, k[3]);
  p.m = view3(m, p.S, k[4]);
  p.mem = view3(mem, p.S, k[5]);
  if (return_deltas) {
    p.delta_c = view3(delta_c, p.S, k[6]);
    p.delta_m = view3(delta_m, p.S, k[7]);
  }
  if (save) p.gates = view3(gates, p.S, k[8]);
  if (x.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    stlstm_memory_forward_cuda(p, current_stream(x));
#endif
  } else {
    stlstm_memory_forward_cpu(p);
  }
  return {mem, delta_c, delta_m, gates};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> backward_kernel(
    const OptTensor& grad_mem, const OptTensor& grad_delta_c, const OptTensor& grad_delta_m,
    const Tensor& gates, const Tensor& c, const Tensor& m, at::ScalarType gate_dtype) {
  // gates (gate dtype), c and m come from the forward; the rest is checked against them.
  check_tensor(kOp, gates, "gates", gates);
  const int64_t C = check_stacked(kOp, gates, "gates", 6, "gate slots");
  const auto state_shape = with_channels(gates, C);
  for (const auto& [t, name] : {std::pair{&c, "c"}, std::pair{&m, "m"}}) {
    check_tensor(kOp, *t, name, gates);
    check_shape(kOp, *t, name, state_shape, "(B, C, *spatial)");
  }
  check_dtype(kOp, m, "m", c.scalar_type(), "c");
  check_state_dtype(kOp, c, "c", gate_dtype);
  check_dtype(kOp, gates, "gates", gate_dtype, "the gates");
  if (grad_mem) {
    check_tensor(kOp, *grad_mem, "grad_mem", gates);
    check_shape(kOp, *grad_mem, "grad_mem", with_channels(gates, 2 * C), "(B, 2*C, *spatial)");
    check_dtype(kOp, *grad_mem, "grad_mem", c.scalar_type(), "mem");
  }
  for (const auto& [t, name] :
       {std::pair{&grad_delta_c, "grad_delta_c"}, std::pair{&grad_delta_m, "grad_delta_m"}}) {
    if (!*t) continue;
    check_tensor(kOp, **t, name, gates);
    check_shape(kOp, **t, name, state_shape, "(B, C, *spatial)");
    check_dtype(kOp, **t, name, gate_dtype, "the deltas");
  }
  STLSTMMemoryBackward p;
  p.B = gates.size(0);
  p.C = C;
  p.S = spatial_numel(gates);
  p.gate_dtype = dtype_of(gate_dtype);
  p.state_dtype = dtype_of(c.scalar_type());
  const auto grad_x = empty_like_format(with_channels(gates, 7 * C), gates, gate_dtype);
  const auto grad_h = empty_like_format(with_channels(gates, 4 * C), gates, gate_dtype);
  const auto grad_mc = empty_like_format(with_channels(gates, 3 * C), gates, gate_dtype);
  const auto grad_c = empty_like_format(state_shape, gates, c.scalar_type());
  const auto grad_m = empty_like_format(state_shape, gates, c.scalar_type());
  if (grad_c.numel() == 0) return {grad_x, grad_h, grad_mc, grad_c, grad_m};

  Tensor k[11];
  p.grad_mem = view3(grad_mem, p.S, k[0]);
  p.grad_delta_c = view3(grad_delta_c, p.S, k[1]);
  p.grad_delta_m = view3(grad_delta_m, p.S, k[2]);
  p.gates = view3(gates, p.S, k[3]);
  p.c = view3(c, p.S, k[4]);
  p.m = view3(m, p.S, k[5]);
  p.grad_x_cat = view3(grad_x, p.S, k[6]);
  p.grad_h_cat = view3(grad_h, p.S, k[7]);
  p.grad_m_cat = view3(grad_mc, p.S, k[8]);
  p.grad_c = view3(grad_c, p.S, k[9]);
  p.grad_m = view3(grad_m, p.S, k[10]);
  if (gates.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(gates.device());
    stlstm_memory_backward_cuda(p, current_stream(gates));
#endif
  } else {
    stlstm_memory_backward_cpu(p);
  }
  return {grad_x, grad_h, grad_mc, grad_c, grad_m};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> forward_kernel(const Tensor& x, const Tensor& h,
                                                          const Tensor& mc, const Tensor& c,
                                                          const Tensor& m, double forget_bias,
                                                          bool return_deltas) {
  return forward_impl(x, h, mc, c, m, forget_bias, return_deltas, /*save=*/true);
}

// The public op below autograd (inference): nothing is saved for backward.
std::tuple<Tensor, Tensor, Tensor> inference_kernel(const Tensor& x, const Tensor& h,
                                                    const Tensor& mc, const Tensor& c,
                                                    const Tensor& m, double forget_bias,
                                                    bool return_deltas) {
  auto [mem, delta_c, delta_m, unused] =
      forward_impl(x, h, mc, c, m, forget_bias, return_deltas, /*save=*/false);
  return {mem, delta_c, delta_m};
}

// The autograd node of stlstm_memory, hand-written as convlstm_gates' (see there: a
// torch::autograd::Function cost 3 us a call). Its edges are the five inputs in order.
struct STLSTMMemoryBackward : public torch::autograd::Node {
  // Saved: the six gates (6C, gate dtype) plus the inputs c and m.
  torch::autograd::SavedVariable gates, c, m;
  at::ScalarType gate_dtype;
  bool return_deltas;  // else only mem has a gradient: the deltas are not differentiable

  std::string name() const override { return "STLSTMMemoryBackward"; }

  void release_variables() override {
    gates.reset_data();
    c.reset_data();
    m.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::stlstm_memory_backward", "")
                               .typed<decltype(backward_kernel)>();
    torch::autograd::variable_list out(5);
    const auto grad_dc = return_deltas ? grads[1] : Tensor(), grad_dm = return_deltas ? grads[2] : Tensor();
    if (!grads[0].defined() && !grad_dc.defined() && !grad_dm.defined()) return out;
    const auto self = getptr();
    auto [gx, gh, gm, gc, gmm] =
        op.call(defined_or_null(grads[0]), defined_or_null(grad_dc), defined_or_null(grad_dm),
                gates.unpack(self), c.unpack(self), m.unpack(self), gate_dtype);
    return {gx, gh, gm, gc, gmm};
  }
};

std::tuple<Tensor, Tensor, Tensor> autograd_kernel(const Tensor& x, const Tensor& h,
                                                   const Tensor& mc, const Tensor& c,
                                                   const Tensor& m, double forget_bias,
                                                   bool return_deltas) {
  check_no_tangents("stlstm_memory", has_tangent(x) || has_tangent(h) || has_tangent(mc) ||
                                         has_tangent(c) || has_tangent(m));
  const bool needs_grad = at::GradMode::is_enabled() &&
                          (x.requires_grad() || h.requires_grad() || mc.requires_grad() ||
                           c.requires_grad() || m.requires_grad());
  if (!needs_grad) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::stlstm_memory", "")
                               .typed<decltype(inference_kernel)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, h, mc, c, m, forget_bias, return_deltas);
  }
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("predkern::stlstm_memory_forward", "")
                                     .typed<decltype(forward_kernel)>();
  auto [mem, delta_c, delta_m, gates] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(x, h, mc, c, m, forget_bias, return_deltas);
  }();
  const auto node = c10::make_intrusive<STLSTMMemoryBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, h, mc, c, m));
  node->gates = torch::autograd::SavedVariable(gates, /*is_output=*/false);
  node->c = torch::autograd::SavedVariable(c, false);
  node->m = torch::autograd::SavedVariable(m, false);
  node->gate_dtype = x.scalar_type();
  node->return_deltas = return_deltas;
  torch::autograd::set_history(mem, node);
  if (return_deltas) {
    torch::autograd::set_history(delta_c, node);
    torch::autograd::set_history(delta_m, node);
  }
  return {mem, delta_c, delta_m};
}

}  // namespace

TORCH_LIBRARY_IMPL(predkern, Autograd, m) { m.impl("stlstm_memory", &autograd_kernel); }

TORCH_LIBRARY_IMPL(predkern, CPU, m) {
  m.impl("stlstm_memory", &inference_kernel);
  m.impl("stlstm_memory_forward", &forward_kernel);
  m.impl("stlstm_memory_backward", &backward_kernel);
}

// Sparse inputs reach these kernels only to be refused by check_inputs, naming the argument.
TORCH_LIBRARY_IMPL(predkern, SparseCPU, m) {
  m.impl("stlstm_memory", &inference_kernel);
  m.impl("stlstm_memory_forward", &forward_kernel);
}

#ifdef PREDKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(predkern, SparseCUDA, m) {
  m.impl("stlstm_memory", &inference_kernel);
  m.impl("stlstm_memory_forward", &forward_kernel);
}

TORCH_LIBRARY_IMPL(predkern, CUDA, m) {
  m.impl("stlstm_memory", &inference_kernel);
  m.impl("stlstm_memory_forward", &forward_kernel);
  m.impl("stlstm_memory_backward", &backward_kernel);
}
#endif

}  // namespace predkern
