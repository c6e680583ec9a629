// decoupling_loss for torch: checks, 3-D views, outputs, autograd, and the CPU / CUDA kernels of
// the schemas in ops.cpp. The math lives in decoupling_loss.h, cpu/ and cuda/ (SPEC.md section 3).
#include <torch/autograd.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/library.h>
#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#endif

#include "common.h"
#include "decoupling_loss.h"

namespace predkern {
namespace {

constexpr const char* kOp = "decoupling_loss";

void check_inputs(const Tensor& dc, const Tensor& dm) {
  check_tensor(kOp, dc, "delta_c", dc);
  TORCH_CHECK_VALUE(dc.dim() >= 2, kOp, ": `delta_c` must have shape (N, C, *spatial), got ",
                    num(dc.dim()), " dims ", shape_str(dc.sizes()));
  check_tensor(kOp, dm, "delta_m", dc);
  check_shape(kOp, dm, "delta_m", dc.sizes(), "delta_c.shape");
  check_dtype(kOp, dm, "delta_m", dc.scalar_type(), "delta_c");
}

std::tuple<Tensor, Tensor> forward_impl(const Tensor& dc, const Tensor& dm, bool save) {
  check_inputs(dc, dm);
  DecouplingLossForward p;
  p.N = dc.size(0);
  p.C = dc.size(1);
  p.S = spatial_numel(dc);
  p.dtype = dtype_of(dc.scalar_type());
  const auto f64 = dc.options().dtype(at::kDouble);
  const auto loss = at::empty({}, dc.options());
  const auto row_coefs = at::empty({save ? p.N * p.C : 0, 4}, f64);
  if (p.N * p.C == 0) {  // a mean over no rows
    loss.fill_(std::numeric_limits<double>::quiet_NaN());
    return {loss, row_coefs};
  }
  const auto row_abs_cos = dc.is_cuda() ? at::empty({p.N * p.C}, f64) : Tensor();
  Tensor k[2];
  p.delta_c = view3(dc, p.S, k[0]);
  p.delta_m = view3(dm, p.S, k[1]);
  p.row_coefs = save ? row_coefs.data_ptr<double>() : nullptr;
  p.row_abs_cos = row_abs_cos.defined() ? row_abs_cos.data_ptr<double>() : nullptr;
  p.loss = loss.data_ptr();
  if (dc.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dc.device());
    decoupling_loss_forward_cuda(p, current_stream(dc));
#endif
  } else {
    decoupling_loss_forward_cpu(p);
  }
  return {loss, row_coefs};
}

std::tuple<Tensor, Tensor> forward_kernel(const Tensor& dc, const Tensor& dm) {
  return forward_impl(dc, dm, /*save=*/true);
}

// The public op below autograd (inference): no row coefficients are written.
Tensor inference_kernel(const Tensor& dc, const Tensor& dm) {
  return std::get<0>(forward_impl(dc, dm, /*save=*/false));
}

std::tuple<Tensor, Tensor> backward_kernel(const Tensor& grad_loss, const Tensor& dc,
                                           const Tensor& dm, const Tensor& row_coefs) {
  check_inputs(dc, dm);
  check_tensor(kOp, grad_loss, "grad_loss", dc);
  TORCH_CHECK_VALUE(grad_loss.numel() == 1, kOp, ": `grad_loss` must have one element, got ",
                    shape_str(grad_loss.sizes()));
  const auto R = dc.size(0) * dc.size(1);
  check_tensor(kOp, row_coefs, "row_coefs", dc);  // on dc's device: the kernels dereference it
  TORCH_CHECK_VALUE(row_coefs.scalar_type() == at::kDouble && row_coefs.is_contiguous() &&
                        row_coefs.sizes() == at::IntArrayRef({R, 4}),
                    kOp, ": `row_coefs` must be a contiguous float64 (N*C, 4) tensor, got ",
                    row_coefs.scalar_type(), " ", shape_str(row_coefs.sizes()));
  DecouplingLossBackward p;
  p.N = dc.size(0);
  p.C = dc.size(1);
  p.S = spatial_numel(dc);
  p.dtype = dtype_of(dc.scalar_type());
  const auto grad_c = empty_like_format(dc.sizes(), dc, dc.scalar_type());
  const auto grad_m = empty_like_format(dc.sizes(), dc, dc.scalar_type());
  if (grad_c.numel() == 0) return {grad_c, grad_m};
  const auto g = grad_loss.to(dc.scalar_type()).contiguous();
  Tensor k[4];
  p.grad_loss = g.data_ptr();
  p.delta_c = view3(dc, p.S, k[0]);
  p.delta_m = view3(dm, p.S, k[1]);
  p.row_coefs = row_coefs.data_ptr<double>();
  p.grad_delta_c = view3(grad_c, p.S, k[2]);
  p.grad_delta_m = view3(grad_m, p.S, k[3]);
  if (dc.is_cuda()) {
#ifdef PREDKERN_WITH_CUDA
    const c10::cuda::CUDAGuard guard(dc.device());
    decoupling_loss_backward_cuda(p, current_stream(dc));
#endif
  } else {
    decoupling_loss_backward_cpu(p);
  }
  return {grad_c, grad_m};
}

// The autograd node of decoupling_loss, hand-written as convlstm_gates' (see there: a
// torch::autograd::Function cost 3 us a call). Its edges are the two inputs in order.
struct DecouplingLossBackward : public torch::autograd::Node {
  // Saved: the inputs and 4 doubles per row; eager keeps both normalized copies and more.
  torch::autograd::SavedVariable delta_c, delta_m, row_coefs;

  std::string name() const override { return "DecouplingLossBackward"; }

  void release_variables() override {
    delta_c.reset_data();
    delta_m.reset_data();
    row_coefs.reset_data();
  }

  torch::autograd::variable_list apply(torch::autograd::variable_list&& grads) override {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::decoupling_loss_backward", "")
                               .typed<decltype(backward_kernel)>();
    if (!grads[0].defined()) return torch::autograd::variable_list(2);  // no gradient arrived: none leaves
    const auto self = getptr();
    auto [grad_c, grad_m] = op.call(grads[0], delta_c.unpack(self), delta_m.unpack(self), row_coefs.unpack(self));
    return {grad_c, grad_m};
  }
};

Tensor autograd_kernel(const Tensor& dc, const Tensor& dm) {
  check_no_tangents("decoupling_loss", has_tangent(dc) || has_tangent(dm));
  const bool needs_grad =
      at::GradMode::is_enabled() && (dc.requires_grad() || dm.requires_grad());
  if (!needs_grad) {
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("predkern::decoupling_loss", "")
                               .typed<decltype(inference_kernel)>();
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return op.call(dc, dm);
  }
  static const auto forward_op = c10::Dispatcher::singleton()
                                     .findSchemaOrThrow("predkern::decoupling_loss_forward", "")
                                     .typed<decltype(forward_kernel)>();
  auto [loss, row_coefs] = [&] {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    return forward_op.call(dc, dm);
  }();
  const auto node = c10::make_intrusive<DecouplingLossBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(dc, dm));
  node->delta_c = torch::autograd::SavedVariable(dc, /*is_output=*/false);
  node->delta_m = torch::autograd::SavedVariable(dm, false);
  node->row_coefs = torch::autograd::SavedVariable(row_coefs, false);
  torch::autograd::set_history(loss, node);
  return loss;
}

}  // namespace

TORCH_LIBRARY_IMPL(predkern, Autograd, m) { m.impl("decoupling_loss", &autograd_kernel); }

TORCH_LIBRARY_IMPL(predkern, CPU, m) {
  m.impl("decoupling_loss", &inference_kernel);
  m.impl("decoupling_loss_forward", &forward_kernel);
  m.impl("decoupling_loss_backward", &backward_kernel);
}

// Sparse inputs reach these kernels only to be refused by check_inputs, naming the argument.
TORCH_LIBRARY_IMPL(predkern, SparseCPU, m) {
  m.impl("decoupling_loss", &inference_kernel);
  m.impl("decoupling_loss_forward", &forward_kernel);
}

#ifdef PREDKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(predkern, SparseCUDA, m) {
  m.impl("decoupling_loss", &inference_kernel);
  m.impl("decoupling_loss_forward", &forward_kernel);
}

TORCH_LIBRARY_IMPL(predkern, CUDA, m) {
  m.impl("decoupling_loss", &inference_kernel);
  m.impl("decoupling_loss_forward", &forward_kernel);
  m.impl("decoupling_loss_backward", &backward_kernel);
}
#endif

}  // namespace predkern
