// Element types a Tensor can hold, with their safetensors names and the conversions between the
// 16-bit floats and fp32. Compute is fp32 on the CPU; 16-bit types are storage only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace xt {

// F8E4M3 is storage only: the codes of block-quantized FP8 weights, which mean nothing without
// their scales (model/fp8_weights.h); ToF32 gives the codes' values, To() cannot make them.
// U8 is storage only too: MXFP4 blocks and scales (model/mxfp4.h); ToF32 gives the bytes' values.
enum class DType : uint8_t { F32, BF16, F16, I32, I64, F8E4M3, U8 };

size_t DTypeSize(DType t);
// The safetensors spelling: "F32", "BF16", "F16", "I32", "I64", "F8_E4M3", "U8".
const char* DTypeName(DType t);
std::optional<DType> DTypeFromName(std::string_view name);
bool IsFloat(DType t);

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round to nearest, ties to even; NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float F16ToF32(uint16_t h);
uint16_t F32ToF16(float f);

// The 8-bit floats of FP8 checkpoints (storage only, decoded on load):
//   E4M3 (safetensors F8_E4M3, torch float8_e4m3fn): sign, 4 exponent bits (bias 7), 3 mantissa
//     bits; no infinities; 0x7f and 0xff are NaN; largest 448, smallest subnormal 2^-9.
//   E8M0 (F8_E8M0, torch float8_e8m0fnu; "ue8m0" scales): 2^(byte - 127); 0xff is NaN.
float Fp8E4m3ToF32(uint8_t b);
float Fp8E8m0ToF32(uint8_t b);
// The nearest E4M3 value, ties to the even code (as torch's .to(float8_e4m3fn)); beyond +-448
// saturates to +-448 (callers clamp first, as transformers does); NaN gives 0x7f.
uint8_t F32ToFp8E4m3(float f);

}  // namespace xt
