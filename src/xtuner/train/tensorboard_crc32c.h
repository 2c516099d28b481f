// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as TFRecord framing needs it, plus the
// "masked" form TFRecord stores (a CRC of data that itself holds CRCs is weak, so it is rotated
// and offset). Table-driven, one byte at a time: event files are small and written rarely.
#pragma once

#include <cstddef>
#include <cstdint>

namespace xt {

// CRC-32C of data[0, n) continuing from `crc`, the CRC-32C of the bytes before (0 to start):
// Crc32cExtend(Crc32c(A), B) == Crc32c(A + B). Crc32c("123456789") == 0xE3069283.
uint32_t Crc32cExtend(uint32_t crc, const void* data, size_t n);
inline uint32_t Crc32c(const void* data, size_t n) { return Crc32cExtend(0, data, n); }

// TFRecord's masking: rotate right by 15 bits and add 0xA282EAD8. Crc32cUnmask inverts it.
inline uint32_t Crc32cMask(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u; }
inline uint32_t Crc32cUnmask(uint32_t masked) {
  const uint32_t rot = masked - 0xA282EAD8u;
  return (rot >> 17) | (rot << 15);
}

}  // namespace xt
