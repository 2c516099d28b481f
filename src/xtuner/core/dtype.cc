#include "xtuner/core/dtype.h"

#include <algorithm>
#include <array>
#include <cmath>

namespace xt {

size_t DTypeSize(DType t) {
  switch (t) {
    case DType::F32:
      return 4;
    case DType::BF16:
      return 2;
    case DType::F16:
      return 2;
    case DType::I32:
      return 4;
    case DType::I64:
      return 8;
    case DType::F8E4M3:
    case DType::U8:
      return 1;
  }
  return 0;
}

const char* DTypeName(DType t) {
  switch (t) {
    case DType::F32:
      return "F32";
    case DType::BF16:
      return "BF16";
    case DType::F16:
      return "F16";
    case DType::I32:
      return "I32";
    case DType::I64:
      return "I64";
    case DType::F8E4M3:
      return "F8_E4M3";
    case DType::U8:
      return "U8";
  }
  return "?";
}

std::optional<DType> DTypeFromName(std::string_view name) {
  if (name == "F32") return DType::F32;
  if (name == "BF16") return DType::BF16;
  if (name == "F16") return DType::F16;
  if (name == "I32") return DType::I32;
  if (name == "I64") return DType::I64;
  if (name == "F8_E4M3") return DType::F8E4M3;
  if (name == "U8") return DType::U8;
  return std::nullopt;
}

float Fp8E4m3ToF32(uint8_t b) {
  const float sign = (b & 0x80) ? -1.0f : 1.0f;
  const int exp = (b >> 3) & 0xf;
  const int man = b & 0x7;
  if (exp == 0xf && man == 0x7) return std::nanf("");
  if (exp == 0) return sign * std::ldexp(float(man), -9);  // subnormal: man/8 * 2^-6
  return sign * std::ldexp(float(8 + man), exp - 10);      // (1 + man/8) * 2^(exp-7)
}

namespace {

// The 127 non-negative finite E4M3 values, by code (0 .. 0x7e): they increase with the code.
const std::array<float, 127>& E4m3Values() {
  static const std::array<float, 127> values = [] {
    std::array<float, 127> v{};
    for (int b = 0; b < 127; ++b) v[b] = Fp8E4m3ToF32(uint8_t(b));
    return v;
  }();
  return values;
}

}  // namespace

uint8_t F32ToFp8E4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0x00;
  const float a = std::fabs(f);
  const std::array<float, 127>& v = E4m3Values();
  // The largest code whose value is <= a (v[0] = 0 <= a).
  const int lo = int(std::upper_bound(v.begin(), v.end(), a) - v.begin()) - 1;
  if (lo == 0x7e) return sign | 0x7e;  // saturate
  const float below = a - v[lo], above = v[lo + 1] - a;
  const int code = below < above ? lo : above < below ? lo + 1 : (lo % 2 == 0 ? lo : lo + 1);
  return uint8_t(sign | code);
}

float Fp8E8m0ToF32(uint8_t b) { return b == 0xff ? std::nanf("") : std::ldexp(1.0f, int(b) - 127); }

bool IsFloat(DType t) { return t == DType::F32 || t == DType::BF16 || t == DType::F16; }

float F16ToF32(uint16_t h) {
  uint32_t sign = uint32_t(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t man = h & 0x3ff;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = std::ldexp(float(man), -24);
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t F32ToF16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;                    // overflow to inf
  if (a < 6.103515625e-05f) {                                 // subnormal or zero
    return sign | uint16_t(std::nearbyint(a * 16777216.0f));  // a / 2^-24
  }
  uint32_t abits = bits & 0x7fffffffu;
  uint32_t exp = (abits >> 23) - 112;
  uint32_t man = abits & 0x7fffff;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rem = man & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h += 1;
  return sign | uint16_t(h);
}

}  // namespace xt
