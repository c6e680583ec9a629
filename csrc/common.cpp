#include "common.h"

#ifdef PREDKERN_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace predkern {

DType dtype_of(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::Float32;
    case at::kDouble: return DType::Float64;
    case at::kHalf: return DType::Float16;
    case at::kBFloat16: return DType::BFloat16;
    default: TORCH_CHECK_TYPE(false, "predkern: unsupported dtype ", t);
  }
}

std::string num(int64_t n) { return std::to_string(n); }

std::string shape_str(at::IntArrayRef sizes) {
  std::string out = "[";
  for (size_t i = 0; i < sizes.size(); ++i) out += (i ? ", " : "") + std::to_string(sizes[i]);
  return out + "]";
}

std::string dtype_str(at::ScalarType t) {
  return "torch." + std::string(c10::getDtypeNames(t).first);
}

std::string layout_str(at::Layout layout) {
  switch (layout) {
    case at::kStrided: return "torch.strided";
    case at::kSparse: return "torch.sparse_coo";
    case at::kSparseCsr: return "torch.sparse_csr";
    case at::kSparseCsc: return "torch.sparse_csc";
    case at::kSparseBsr: return "torch.sparse_bsr";
    case at::kSparseBsc: return "torch.sparse_bsc";
    case at::kMkldnn: return "torch._mkldnn";
    case at::kJagged: return "torch.jagged";
    default: return "layout " + std::to_string(static_cast<int>(layout));
  }
}

void check_no_tangents(const char* op, bool any_tangent) {
  TORCH_CHECK(!any_tangent, "torch.ops.predkern.", op, " has no forward-mode AD formula (a dual tensor ",
              "was passed): call predkern.", op, ", which runs the pure-PyTorch reference under forward-mode AD");
}

void check_tensor(const char* op, const Tensor& t, const char* name, const Tensor& like) {
  TORCH_CHECK_TYPE(t.is_floating_point(), op, ": `", name, "` must be a floating-point tensor ",
                   "(float16, bfloat16, float32 or float64), got dtype ", dtype_str(t.scalar_type()));
  TORCH_CHECK_VALUE(t.layout() == at::kStrided, op, ": `", name,
                    "` must be a strided (dense) tensor, got layout ", layout_str(t.layout()));
  TORCH_CHECK_VALUE(t.device() == like.device(), op, ": `", name,
                    "` must be on the device of the other inputs (", like.device(), "), got ",
                    t.device());
}

void check_shape(const char* op, const Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* what) {
  TORCH_CHECK_VALUE(t.sizes() == expected, op, ": `", name, "` must have shape ", shape_str(expected),
                    " (as ", what, "), got ", shape_str(t.sizes()));
}

void check_dtype(const char* op, const Tensor& t, const char* name, at::ScalarType expected,
                 const char* what) {
  TORCH_CHECK_VALUE(t.scalar_type() == expected, op, ": `", name, "` must have the dtype of ",
                    what, " (", dtype_str(expected), "), got ", dtype_str(t.scalar_type()));
}

void check_state_dtype(const char* op, const Tensor& state, const char* name,
                       at::ScalarType gates) {
  const auto s = state.scalar_type();
  const bool autocast_mix = s == at::kFloat && (gates == at::kHalf || gates == at::kBFloat16);
  TORCH_CHECK_VALUE(s == gates || autocast_mix, op, ": `", name,
                    "` must have the dtype of the gates (", dtype_str(gates),
                    "), or float32 with float16/bfloat16 gates, got ", dtype_str(s));
}

int64_t check_stacked(const char* op, const Tensor& t, const char* name, int64_t k,
                      const char* blocks) {
  TORCH_CHECK_VALUE(t.dim() >= 2, op, ": `", name, "` must have shape (B, ", num(k),
                    "*C, *spatial), got ", num(t.dim()), " dims ", shape_str(t.sizes()));
  TORCH_CHECK_VALUE(t.size(1) % k == 0, op, ": `", name, "`.size(1) must be a multiple of the ",
                    num(k), " ", blocks, ", got ", num(t.size(1)));
  return t.size(1) / k;
}

std::vector<int64_t> with_channels(const Tensor& t, int64_t channels) {
  auto sizes = t.sizes().vec();
  sizes[1] = channels;
  return sizes;
}

int64_t spatial_numel(const Tensor& t) {
  int64_t s = 1;
  for (int64_t d = 2; d < t.dim(); ++d) s *= t.size(d);
  return s;
}

View3 view3(const Tensor& t, int64_t S, Tensor& keep) {
  int64_t ss = 1, next = -1;  // next: the stride the next outer spatial dim must have
  bool flat = true;
  for (int64_t d = t.dim() - 1; d >= 2 && flat; --d) {
    if (t.size(d) == 1) continue;
    flat = next < 0 || t.stride(d) == next;
    if (next < 0) ss = t.stride(d);
    next = t.stride(d) * t.size(d);
  }
  if (flat) return {t.data_ptr(), t.stride(0), t.stride(1), ss};
  keep = t.reshape({t.size(0), t.size(1), S});
  return {keep.data_ptr(), keep.stride(0), keep.stride(1), keep.stride(2)};
}

View3 view3(const OptTensor& t, int64_t S, Tensor& keep) {
  return t ? view3(*t, S, keep) : View3{};
}

Tensor empty_like_format(at::IntArrayRef sizes, const Tensor& like, at::ScalarType dtype) {
  return at::empty(sizes, like.options().dtype(dtype).memory_format(like.suggest_memory_format()));
}

#ifdef PREDKERN_WITH_CUDA
void* current_stream(const Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

}  // namespace predkern
