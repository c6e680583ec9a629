// C++ test of the standalone library: predkern::convlstm_gates through the dispatcher, forward and
// backward, against the same math written with ATen ops, in float64 (CMakeLists.txt runs it).
#include <torch/torch.h>

#include <cstdio>

namespace {

std::tuple<torch::Tensor, torch::Tensor> eager(const torch::Tensor& gx, const torch::Tensor& c,
                                               const torch::Tensor& gh, double forget_bias) {
  auto z = (gx + gh).chunk(4, 1);  // gate order "ifgo"
  auto i = torch::sigmoid(z[0]), f = torch::sigmoid(z[1] + forget_bias), g = torch::tanh(z[2]);
  auto c_new = f * c + i * g;
  return {torch::sigmoid(z[3]) * torch::tanh(c_new), c_new};
}

int failures = 0;

void expect_close(const torch::Tensor& got, const torch::Tensor& want, const char* what) {
  const double err = (got - want).abs().max().item<double>();
  std::printf("%-12s max abs error %.3g\n", what, err);
  if (!(err < 1e-12)) ++failures;
}

}  // namespace

int main() {
  torch::manual_seed(0);
  const auto opts = torch::TensorOptions().dtype(torch::kFloat64);
  auto gx = torch::randn({2, 12, 5, 7}, opts).requires_grad_();
  auto gh = torch::randn({2, 12, 5, 7}, opts).requires_grad_();
  auto c = torch::randn({2, 3, 5, 7}, opts).requires_grad_();
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("predkern::convlstm_gates", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(
                           const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                           const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
                           c10::string_view, c10::string_view)>();
  auto [h, c_new] = op.call(gx, c, gh, std::nullopt, std::nullopt, 1.0, "ifgo", "sigmoid");
  auto [h_ref, c_ref] = eager(gx, c, gh, 1.0);
  expect_close(h, h_ref, "h_new");
  expect_close(c_new, c_ref, "c_new");

  auto gh_out = torch::randn_like(h), gc_out = torch::randn_like(c_new);
  auto grads = torch::autograd::grad({h, c_new}, {gx, gh, c}, {gh_out, gc_out});
  auto grads_ref = torch::autograd::grad({h_ref, c_ref}, {gx, gh, c}, {gh_out, gc_out});
  expect_close(grads[0], grads_ref[0], "d gates_x");
  expect_close(grads[1], grads_ref[1], "d gates_h");
  expect_close(grads[2], grads_ref[2], "d c");

  try {  // bad input raises a c10::Error naming the argument
    op.call(gx, c.narrow(1, 0, 2), gh, std::nullopt, std::nullopt, 0.0, "ifgo", "sigmoid");
    ++failures;
    std::printf("bad shape did not raise\n");
  } catch (const c10::Error& e) {
    const bool names_c = std::string(e.what()).find("`c`") != std::string::npos;
    std::printf("bad shape   raised%s\n", names_c ? " naming `c`" : " WITHOUT naming `c`");
    failures += !names_c;
  }
  std::printf("%s\n", failures ? "FAILED" : "all passed");
  return failures ? 1 : 0;
}
