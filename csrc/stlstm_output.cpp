// stlstm_output for torch: checks, 3-D views, outputs, autograd, and the CPU / CUDA kernels of the
// schemas in ops.cpp. The math lives in cpu/ and cuda/ (SPEC.md section 2, stage 2).
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common.h"
#include "stlstm_output.h"

namespace predkern {
namespace {

constexpr const char* kOp = "stlstm_output";

void check_inputs(const Tensor& x, const Tensor& h, const Tensor& oc, const Tensor& lc) {
  check_tensor(kOp, x, "x_cat", x);
  const int64_t C = check_stacked(kOp, x, "x_cat", 7, "blocks (i, f, g, i', f', g', o)");
  check_tensor(kOp, h, "h_cat", x);
  check_shape(kOp, h, "h_cat", with_channels(x, 4 * C), "(B, 4*C, *spatial)");
  check_dtype(kOp, h, "h_cat", x.scalar_type(), "x_cat");
  for (const auto& [t, name] : {std::pair{&oc, "o_conv"}, std::pair{&lc, "last_conv"}}) {
    check_tensor(kOp, *t, name, x);
    check_shape(kOp, *t, name, with_channels(x, C), "(B, C, *spatial) with C = x_cat.size(1) / 7");
    check_dtype(kOp, *t, name, x.scalar_type(), "x_cat");
  }
}

std::tuple<Tensor, Tensor, Tensor> forward_impl(const Tensor& x, const Tensor& h, const Tensor& oc,
                                                const Tensor& lc, bool save) {
  check_inputs(x, h, oc, lc);
  STLSTMOutputForward p;
  p.B = x.size(0);
  p.C = x.size(1) / 7;
  p.S = spatial_numel(x);
  p.dtype = dtype_of(x.scalar_type());
  const auto h_new = empty_like_format(oc.sizes(), x, x.scalar_type());
  const auto o_gate = save ? empty_like_format(oc.sizes(), x, x.scalar_type()) : Tensor();
  const auto tanh_last = save ? empty_like_format(oc.sizes(), x, x.scalar_type()) : Tensor();
  if (h_new.numel() == 0) return {h_new, o_gate, tanh_last};
  Tensor k[7];
  p.x_cat = view3(x, p.S, k[0]);
  p.h_cat = view3(h, p.S, k[1]);
  p.o_conv = view3(oc, p.S, k[2]);
  p.last_conv = view3(lc, p.S, k[3]);
  p.h_new = view3(h_new, p.S, k[4]);
  if (save) {
    p.o_gate = view3(o_gate, p.S, k[5]);
    p.tanh_last = view3(tanh_last, p.S, k[6]);
  }
  if (x.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    stlstm_output_forward_cuda(p, current_stream(x));
#endif
  } else {
    stlstm_output_forward_cpu(p);
  }
  return {h_new, o_gate, tanh_last};
}

std::tuple<Tensor, Tensor, Tensor> forward_kernel(const Tensor& x, const Tensor& h,
                                                  const Tensor& oc, const Tensor& lc) {
  return forward_impl(x, h, oc, lc, /*save=*/true);
}

// The public op below autograd (inference): nothing is saved for backward.
Tensor inference_kernel(const Tensor& x, const Tensor& h, const Tensor& oc, const Tensor& lc) {
  return std::get<0>(forward_impl(x, h, oc, lc, /*save=*/false));
}

std::tuple<Tensor, Tensor, Tensor, Tensor> backward_kernel(const Tensor& grad_h,
                                                           const Tensor& o_gate,
                                                           const Tensor& tanh_last) {
  check_tensor(kOp, o_gate, "o_gate", o_gate);
  TORCH_CHECK_VALUE(o_gate.dim() >= 2, kOp, ": `o_gate` must have shape (B, C, *spatial), got ",
                    shape_str(o_gate.sizes()));
  for (const auto& [t, name] : {std::pair{&grad_h, "grad_h"}, std::pair{&tanh_last, "tanh_last"}}) {
    check_tensor(kOp, *t, name, o_gate);
    check_shape(kOp, *t, name, o_gate.sizes(), "o_gate.shape");
    check_dtype(kOp, *t, name, o_gate.scalar_type(), "o_gate");
  }
  STLSTMOutputBackward p;
  p.B = o_gate.size(0);
  p.C = o_gate.size(1);
  p.S = spatial_numel(o_gate);
  p.dtype = dtype_of(o_gate.scalar_type());
  const auto dt = o_gate.scalar_type();
  const auto grad_x = empty_like_format(with_channels(o_gate, 7 * p.C), o_gate, dt);
  const auto grad_hc = empty_like_format(with_channels(o_gate, 4 * p.C), o_gate, dt);
  const auto grad_oc = empty_like_format(o_gate.sizes(), o_gate, dt);
  const auto grad_lc = empty_like_format(o_gate.sizes(), o_gate, dt);
  if (grad_oc.numel() == 0) return {grad_x, grad_hc, grad_oc, grad_lc};
  Tensor k[7];
  p.grad_h = view3(grad_h, p.S, k[0]);
  p.o_gate = view3(o_gate, p.S, k[1]);
  p.tanh_last = view3(tanh_last, p.S, k[2]);
  p.grad_x_cat = view3(grad_x, p.S, k[3]);
  p.grad_h_cat = view3(grad_hc, p.S, k[4]);
  p.grad_o_conv = view3(grad_oc, p.S, k[5]);
  p.grad_last_conv = view3(grad_lc, p.S, k[6]);
  if (o_gate.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(o_gate.device());
    stlstm_output_backward_cuda(p, current_stream(o_gate));
#endif
  } else {
    stlstm_output_backward_cpu(p);
  }
  return {grad_x, grad_hc, grad_oc, grad_lc};
}

// The autograd node of stlstm_output, hand-written as convlstm_gates' (see there: a
// torch::autograd::Function cost 3 us a call). Its edges are the four inputs in order.
struct STLSTMOutputBackward : public torch::autograd::Node {
  // Saved: the o gate and tanh(last_conv), C each, as eager saves o and tanh(last).
  torch::autograd::SavedVariable o_gate, tanh_last;

  std::string name() const override { return "STLSTMOutputBackward"; }

  void release_variables() override {
    o_gate.reset_data();
    tanh_last.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::stlstm_output_backward", "")
                               .typed<decltype(backward_kernel)>();
    if (!grads[0].defined()) return torch::autograd::variable_list(4);  // no gradient arrived: none leaves
    const auto self = getptr();
    auto [gx, gh, goc, glc] = op.call(grads[0], o_gate.unpack(self), tanh_last.unpack(self));
    return {gx, gh, goc, glc};
  }
};

Tensor autograd_kernel(const Tensor& x, const Tensor& h, const Tensor& oc, const Tensor& lc) {
  check_no_tangents("stlstm_output", has_tangent(x) || has_tangent(h) || has_tangent(oc) || has_tangent(lc));
  const bool needs_grad = at::GradMode::is_enabled() && (x.requires_grad() || h.requires_grad() ||
                                                         oc.requires_grad() || lc.requires_grad());
  if (!needs_grad) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::stlstm_output", "")
                               .typed<decltype(inference_kernel)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(x, h, oc, lc);
  }
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("predkern::stlstm_output_forward", "")
                                     .typed<decltype(forward_kernel)>();
  auto [h_new, o_gate, tanh_last] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(x, h, oc, lc);
  }();
  const auto node = c10::make_intrusive<STLSTMOutputBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, h, oc, lc));
  node->o_gate = torch::autograd::SavedVariable(o_gate, /*is_output=*/false);
  node->tanh_last = torch::autograd::SavedVariable(tanh_last, false);
  torch::autograd::set_history(h_new, node);
  return h_new;
}

}  // namespace

TORCH_LIBRARY_IMPL(predkern, Autograd, m) { m.impl("stlstm_output", &autograd_kernel); }

TORCH_LIBRARY_IMPL(predkern, CPU, m) {
  m.impl("stlstm_output", &inference_kernel);
  m.impl("stlstm_output_forward", &forward_kernel);
  m.impl("stlstm_output_backward", &backward_kernel);
}

// Sparse inputs reach these kernels only to be refused by check_inputs, naming the argument.
TORCH_LIBRARY_IMPL(predkern, SparseCPU, m) {
  m.impl("stlstm_output", &inference_kernel);
  m.impl("stlstm_output_forward", &forward_kernel);
}

#ifdef PREDKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(predkern, SparseCUDA, m) {
  m.impl("stlstm_output", &inference_kernel);
  m.impl("stlstm_output_forward", &forward_kernel);
}

TORCH_LIBRARY_IMPL(predkern, CUDA, m) {
  m.impl("stlstm_output", &inference_kernel);
  m.impl("stlstm_output_forward", &forward_kernel);
  m.impl("stlstm_output_backward", &backward_kernel);
}
#endif

}  // namespace predkern
