#include "xtuner/core/tensor.h"

#include <cstdlib>
#include <cstring>

namespace xt {

int64_t NumElements(const Shape& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const Shape& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

Tensor Tensor::Empty(DType dtype, Shape shape) {
  for (int64_t d : shape) XT_CHECK(d >= 0, "negative dimension in " + ShapeString(shape));
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  size_t bytes = t.nbytes();
  size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  XT_CHECK(p != nullptr, "out of memory allocating " + std::to_string(alloc) + " bytes");
  t.storage_ = std::shared_ptr<void>(p, std::free);
  t.data_ = p;
  return t;
}

Tensor Tensor::Zeros(DType dtype, Shape shape) {
  Tensor t = Empty(dtype, std::move(shape));
  std::memset(t.data_, 0, t.nbytes());
  return t;
}

Tensor Tensor::Wrap(DType dtype, Shape shape, void* data, std::shared_ptr<void> keepalive) {
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.storage_ = std::move(keepalive);
  t.data_ = data;
  return t;
}

float* Tensor::f32() {
  XT_CHECK(dtype_ == DType::F32, std::string("tensor is ") + DTypeName(dtype_) + ", not F32");
  return static_cast<float*>(data_);
}
const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }
int32_t* Tensor::i32() {
  XT_CHECK(dtype_ == DType::I32, std::string("tensor is ") + DTypeName(dtype_) + ", not I32");
  return static_cast<int32_t*>(data_);
}
const int32_t* Tensor::i32() const { return const_cast<Tensor*>(this)->i32(); }
int64_t* Tensor::i64() {
  XT_CHECK(dtype_ == DType::I64, std::string("tensor is ") + DTypeName(dtype_) + ", not I64");
  return static_cast<int64_t*>(data_);
}
const int64_t* Tensor::i64() const { return const_cast<Tensor*>(this)->i64(); }

Tensor Tensor::Reshape(Shape shape) const {
  XT_CHECK(NumElements(shape) == numel(),
           "reshape " + ShapeString(shape_) + " to " + ShapeString(shape));
  Tensor t = *this;
  t.shape_ = std::move(shape);
  return t;
}

Tensor Tensor::Slice0(int64_t begin, int64_t end) const {
  XT_CHECK(ndim() >= 1 && 0 <= begin && begin <= end && end <= shape_[0], "bad slice");
  Tensor t = *this;
  int64_t row = shape_[0] == 0 ? 0 : numel() / shape_[0];
  t.shape_[0] = end - begin;
  t.data_ = static_cast<char*>(data_) + size_t(begin * row) * DTypeSize(dtype_);
  return t;
}

Tensor Tensor::Clone() const {
  Tensor t = Empty(dtype_, shape_);
  if (nbytes()) std::memcpy(t.data_, data_, nbytes());
  return t;
}

Tensor Tensor::ToF32() const {
  Tensor t = Empty(DType::F32, shape_);
  float* dst = t.f32();
  int64_t n = numel();
  switch (dtype_) {
    case DType::F32:
      std::memcpy(dst, data_, nbytes());
      break;
    case DType::BF16: {
      auto* src = static_cast<const uint16_t*>(data_);
      for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(src[i]);
      break;
    }
    case DType::F16: {
      auto* src = static_cast<const uint16_t*>(data_);
      for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(src[i]);
      break;
    }
    case DType::I32:
      for (int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<const int32_t*>(data_)[i]);
      break;
    case DType::I64:
      for (int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<const int64_t*>(data_)[i]);
      break;
    case DType::F8E4M3:
      for (int64_t i = 0; i < n; ++i) dst[i] = Fp8E4m3ToF32(static_cast<const uint8_t*>(data_)[i]);
      break;
    case DType::U8:
      for (int64_t i = 0; i < n; ++i) dst[i] = float(static_cast<const uint8_t*>(data_)[i]);
      break;
  }
  return t;
}

Tensor Tensor::To(DType dtype) const {
  if (dtype == dtype_) return Clone();
  if (dtype == DType::F32) return ToF32();
  Tensor t = Empty(dtype, shape_);
  int64_t n = numel();
  if (dtype == DType::BF16 || dtype == DType::F16) {
    Tensor src = dtype_ == DType::F32 ? *this : ToF32();
    const float* s = src.f32();
    auto* d = static_cast<uint16_t*>(t.data_);
    for (int64_t i = 0; i < n; ++i) d[i] = dtype == DType::BF16 ? F32ToBf16(s[i]) : F32ToF16(s[i]);
  } else if (dtype == DType::I32 && dtype_ == DType::I64) {
    for (int64_t i = 0; i < n; ++i) t.i32()[i] = int32_t(i64()[i]);
  } else if (dtype == DType::I64 && dtype_ == DType::I32) {
    for (int64_t i = 0; i < n; ++i) t.i64()[i] = i32()[i];
  } else {
    XT_CHECK(false, std::string("unsupported conversion ") + DTypeName(dtype_) + " -> " +
                        DTypeName(dtype));
  }
  return t;
}

}  // namespace xt
