// prednet_error for torch: checks, 3-D views, outputs, autograd, and the CPU / CUDA kernels of the
// schemas in ops.cpp. The math lives in prednet_error.h, cpu/ and cuda/ (SPEC.md section 4).
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common.h"
#include "prednet_error.h"

namespace predkern {
namespace {

constexpr const char* kOp = "prednet_error";

void check_inputs(const Tensor& a, const Tensor& a_hat) {
  check_tensor(kOp, a, "a", a);
  TORCH_CHECK_VALUE(a.dim() >= 2, kOp, ": `a` must have shape (N, C, *spatial), got ", num(a.dim()),
                    " dims ", shape_str(a.sizes()));
  check_tensor(kOp, a_hat, "a_hat", a);
  check_shape(kOp, a_hat, "a_hat", a.sizes(), "a.shape");
  check_dtype(kOp, a_hat, "a_hat", a.scalar_type(), "a");
}

PredNetErrorOptions options(bool relu_a_hat, std::optional<double> clip_max,
                            c10::string_view first) {
  TORCH_CHECK_VALUE(first == "pred" || first == "target", kOp,
                    ": `first` must be one of ('pred', 'target'), got '", std::string(first), "'");
  PredNetErrorOptions o;
  o.relu_a_hat = relu_a_hat;
  o.has_clip = clip_max.has_value();
  o.clip_max = clip_max.value_or(0.0);
  o.target_first = first == "target";
  return o;
}

std::tuple<Tensor, Tensor, Tensor> forward_kernel(const Tensor& a, const Tensor& a_hat,
                                                  bool relu_a_hat, std::optional<double> clip_max,
                                                  c10::string_view first, bool return_mean) {
  check_inputs(a, a_hat);
  PredNetErrorForward p;
  p.opt = options(relu_a_hat, clip_max, first);
  p.N = a.size(0);
  p.C = a.size(1);
  p.S = spatial_numel(a);
  p.dtype = dtype_of(a.scalar_type());
  const auto dt = a.scalar_type();
  const auto e = empty_like_format(with_channels(a, 2 * p.C), a, dt);
  const auto a_hat_out = empty_like_format(a.sizes(), a, dt);
  const auto e_mean = at::empty({return_mean ? p.N : 0}, a.options());
  if (a.numel() == 0) {
    if (return_mean) e_mean.fill_(std::numeric_limits<double>::quiet_NaN());  // mean of nothing
    return {e, a_hat_out, e_mean};
  }
  const auto partial = return_mean && a.is_cuda()
                           ? at::empty({p.N, prednet_error_chunks(p.C, p.S)},
                                       a.options().dtype(at::kDouble))
                           : Tensor();
  Tensor k[4];
  p.a = view3(a, p.S, k[0]);
  p.a_hat = view3(a_hat, p.S, k[1]);
  p.e = view3(e, p.S, k[2]);
  p.a_hat_out = view3(a_hat_out, p.S, k[3]);
  p.e_mean = return_mean ? e_mean.data_ptr() : nullptr;
  p.partial = partial.defined() ? partial.data_ptr<double>() : nullptr;
  if (a.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(a.device());
    prednet_error_forward_cuda(p, current_stream(a));
#endif
  } else {
    prednet_error_forward_cpu(p);
  }
  return {e, a_hat_out, e_mean};
}

std::tuple<Tensor, Tensor> backward_kernel(const OptTensor& grad_e, const OptTensor& grad_out,
                                           const OptTensor& grad_mean, const Tensor& a,
                                           const Tensor& a_hat, bool relu_a_hat,
                                           std::optional<double> clip_max,
                                           c10::string_view first) {
  check_inputs(a, a_hat);
  PredNetErrorBackward p;
  p.opt = options(relu_a_hat, clip_max, first);
  p.N = a.size(0);
  p.C = a.size(1);
  p.S = spatial_numel(a);
  p.dtype = dtype_of(a.scalar_type());
  const auto dt = a.scalar_type();
  if (grad_e) {
    check_tensor(kOp, *grad_e, "grad_e", a);
    check_shape(kOp, *grad_e, "grad_e", with_channels(a, 2 * p.C), "(N, 2*C, *spatial)");
    check_dtype(kOp, *grad_e, "grad_e", dt, "a");
  }
  if (grad_out) {
    check_tensor(kOp, *grad_out, "grad_a_hat_out", a);
    check_shape(kOp, *grad_out, "grad_a_hat_out", a.sizes(), "a.shape");
    check_dtype(kOp, *grad_out, "grad_a_hat_out", dt, "a");
  }
  Tensor grad_mean_c;
  if (grad_mean) {
    check_tensor(kOp, *grad_mean, "grad_e_mean", a);
    check_shape(kOp, *grad_mean, "grad_e_mean", {p.N}, "(N,)");
    check_dtype(kOp, *grad_mean, "grad_e_mean", dt, "a");
    grad_mean_c = grad_mean->contiguous();
  }
  const auto grad_a = empty_like_format(a.sizes(), a, dt);
  const auto grad_a_hat = empty_like_format(a.sizes(), a, dt);
  if (a.numel() == 0) return {grad_a, grad_a_hat};
  Tensor k[6];
  p.grad_e = view3(grad_e, p.S, k[0]);
  p.grad_a_hat_out = view3(grad_out, p.S, k[1]);
  p.grad_e_mean = grad_mean_c.defined() ? grad_mean_c.data_ptr() : nullptr;
  p.a = view3(a, p.S, k[2]);
  p.a_hat = view3(a_hat, p.S, k[3]);
  p.grad_a = view3(grad_a, p.S, k[4]);
  p.grad_a_hat = view3(grad_a_hat, p.S, k[5]);
  if (a.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(a.device());
    prednet_error_backward_cuda(p, current_stream(a));
#endif
  } else {
    prednet_error_backward_cpu(p);
  }
  return {grad_a, grad_a_hat};
}

// The autograd node of prednet_error, hand-written as convlstm_gates' (see there: a
// torch::autograd::Function cost 3 us a call). Its edges are a and a_hat.
struct PredNetErrorBackward : public torch::autograd::Node {
  // Saved: the two inputs only (eager keeps relu(a_hat) and both halves of e).
  torch::autograd::SavedVariable a, a_hat;
  bool relu_a_hat, return_mean;  // without return_mean, e_mean is not differentiable
  std::optional<double> clip_max;
  std::string first;

  std::string name() const override { return "PredNetErrorBackward"; }

  void release_variables() override {
    a.reset_data();
    a_hat.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::prednet_error_backward", "")
                               .typed<decltype(backward_kernel)>();
    // Undefined incoming gradients stay undefined: the kernel skips their terms, unread.
    const Tensor grad_mean = return_mean ? grads[2] : Tensor();
    if (!grads[0].defined() && !grads[1].defined() && !grad_mean.defined())
      return torch::autograd::variable_list(2);
    const auto self = getptr();
    auto [grad_a, grad_a_hat] =
        op.call(defined_or_null(grads[0]), defined_or_null(grads[1]), defined_or_null(grad_mean),
                a.unpack(self), a_hat.unpack(self), relu_a_hat, clip_max, first);
    return {grad_a, grad_a_hat};
  }
};

std::tuple<Tensor, Tensor, Tensor> autograd_kernel(const Tensor& a, const Tensor& a_hat,
                                                   bool relu_a_hat, std::optional<double> clip_max,
                                                   c10::string_view first, bool return_mean) {
  check_no_tangents("prednet_error", has_tangent(a) || has_tangent(a_hat));
  const bool needs_grad = at::GradMode::is_enabled() && (a.requires_grad() || a_hat.requires_grad());
  if (!needs_grad) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::prednet_error", "")
                               .typed<decltype(forward_kernel)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(a, a_hat, relu_a_hat, clip_max, first, return_mean);
  }
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("predkern::prednet_error", "")
                                     .typed<decltype(forward_kernel)>();
  auto [e, a_hat_out, e_mean] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(a, a_hat, relu_a_hat, clip_max, first, return_mean);
  }();
  const auto node = c10::make_intrusive<PredNetErrorBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(a, a_hat));
  node->a = torch::autograd::SavedVariable(a, /*is_output=*/false);
  node->a_hat = torch::autograd::SavedVariable(a_hat, false);
  node->relu_a_hat = relu_a_hat;
  node->return_mean = return_mean;
  node->clip_max = clip_max;
  node->first = std::string(first);
  torch::autograd::set_history(e, node);
  torch::autograd::set_history(a_hat_out, node);
  if (return_mean) torch::autograd::set_history(e_mean, node);
  return {e, a_hat_out, e_mean};
}

}  // namespace

TORCH_LIBRARY_IMPL(predkern, Autograd, m) { m.impl("prednet_error", &autograd_kernel); }

TORCH_LIBRARY_IMPL(predkern, CPU, m) {
  m.impl("prednet_error", &forward_kernel);
  m.impl("prednet_error_backward", &backward_kernel);
}

// Sparse inputs reach these kernels only to be refused by check_inputs, naming the argument.
TORCH_LIBRARY_IMPL(predkern, SparseCPU, m) { m.impl("prednet_error", &forward_kernel); }

#ifdef PREDKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(predkern, SparseCUDA, m) { m.impl("prednet_error", &forward_kernel); }

TORCH_LIBRARY_IMPL(predkern, CUDA, m) {
  m.impl("prednet_error", &forward_kernel);
  m.impl("prednet_error_backward", &backward_kernel);
}
#endif

}  // namespace predkern
