// Tensor: a dtype, a shape and a pointer into shared storage (owned heap memory or a mapped
// file). Always contiguous, row-major. Copying a Tensor shares its storage (like a view); use
// Clone() for a deep copy. Not thread-safe to resize; concurrent reads and disjoint writes are
// fine.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "xtuner/core/dtype.h"
#include "xtuner/core/status.h"

namespace xt {

using Shape = std::vector<int64_t>;

int64_t NumElements(const Shape& shape);
std::string ShapeString(const Shape& shape);  // "[2, 16, 320]"

class Tensor {
 public:
  Tensor() = default;
  // Uninitialized, 64-byte aligned, owned storage.
  static Tensor Empty(DType dtype, Shape shape);
  static Tensor Zeros(DType dtype, Shape shape);
  // A tensor over memory owned elsewhere; `keepalive` holds that memory (may be null when the
  // caller guarantees the lifetime).
  static Tensor Wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive);

  bool defined() const { return data_ != nullptr || NumElements(shape_) == 0; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int ndim() const { return int(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(i < 0 ? i + ndim() : i); }
  int64_t numel() const { return NumElements(shape_); }
  size_t nbytes() const { return size_t(numel()) * DTypeSize(dtype_); }

  void* data() { return data_; }
  const void* data() const { return data_; }
  // Typed access; aborts if the dtype does not match.
  float* f32();
  const float* f32() const;
  int32_t* i32();
  const int32_t* i32() const;
  int64_t* i64();
  const int64_t* i64() const;

  // Same storage, new shape with the same number of elements.
  Tensor Reshape(Shape shape) const;
  // Rows [begin, end) along dimension 0; shares storage.
  Tensor Slice0(int64_t begin, int64_t end) const;
  Tensor Clone() const;
  // A new fp32 tensor with the values converted (F32/BF16/F16/I32/I64 sources).
  Tensor ToF32() const;
  // A new tensor of `dtype` (F32 source to F32/BF16/F16; I64 <-> I32 for integers).
  Tensor To(DType dtype) const;

 private:
  DType dtype_ = DType::F32;
  Shape shape_;
  std::shared_ptr<void> storage_;
  void* data_ = nullptr;
};

}  // namespace xt
