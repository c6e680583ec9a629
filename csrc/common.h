// Torch-facing helpers shared by the ops in csrc/<op>.cpp: argument checks that name the argument
// (SPEC.md section 5), 3-D strided views for the kernels, and small autograd utilities.
#pragma once
#include <ATen/ATen.h>

#include <optional>
#include <string>

#include "convlstm_gates.h"

namespace predkern {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

DType dtype_of(at::ScalarType t);

// Numbers and shapes for error messages, written with std::to_string rather than an ostream's
// number formatting: on the H200 machine (torch 2.11, GCC 13) a shape error made the process
// segfault while every message without a number was raised cleanly (see NOTES in the GPU results).
std::string num(int64_t n);
std::string shape_str(at::IntArrayRef sizes);  // "[2, 3, 4]", as torch prints a shape
// dtypes and layouts as Python prints them ("torch.float32", "torch.sparse_coo"), so that the
// C++ checks' messages are the Python checks' (predkern/ops/_checks.py) word for word
std::string dtype_str(at::ScalarType t);
std::string layout_str(at::Layout layout);

// `t` is a dense floating-point tensor on `like`'s device.
void check_tensor(const char* op, const Tensor& t, const char* name, const Tensor& like);
void check_shape(const char* op, const Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* what);
void check_dtype(const char* op, const Tensor& t, const char* name, at::ScalarType expected,
                 const char* what);
// A cell state's dtype: the gates' dtype, or float32 with float16/bfloat16 gates (autocast).
void check_state_dtype(const char* op, const Tensor& state, const char* name, at::ScalarType gates);
// `t` is (B, k*C, *spatial) with the channels a multiple of k; returns C.
int64_t check_stacked(const char* op, const Tensor& t, const char* name, int64_t k,
                      const char* blocks);
// t.sizes() with dim 1 set to `channels`.
std::vector<int64_t> with_channels(const Tensor& t, int64_t channels);

int64_t spatial_numel(const Tensor& t);

// (B, k*C, *spatial) seen as (B, k*C, S). When the spatial dims flatten to one stride (dense,
// channels_last, channel or batch slices) the strides are read off without making a view; else
// `keep` holds a reshaped copy, which must outlive the kernel.
View3 view3(const Tensor& t, int64_t S, Tensor& keep);
View3 view3(const OptTensor& t, int64_t S, Tensor& keep);

// An empty output shaped `sizes`, in `like`'s memory format (outputs follow the main input).
Tensor empty_like_format(at::IntArrayRef sizes, const Tensor& like, at::ScalarType dtype);

inline OptTensor defined_or_null(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

inline bool requires_grad(const OptTensor& t) { return t && t->requires_grad(); }

// Forward-mode AD (dual tensors): the fused kernels have no formula for it and would drop the
// tangent, a silent zero. predkern.<op> gives dual tensors to the reference; a direct call of
// torch.ops.predkern.<op> with one raises (check_no_tangents, before grad mode is consulted:
// forward-mode AD runs under no_grad too).
inline bool has_tangent(const Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_tangent(const OptTensor& t) { return t && has_tangent(*t); }
void check_no_tangents(const char* op, bool any_tangent);

#ifdef PREDKERN_WITH_CUDA
void* current_stream(const Tensor& t);  // the current cudaStream_t of t's device
#endif

}  // namespace predkern
