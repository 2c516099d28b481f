// SplitMix64: the one small random generator of the engine. Its output is fixed by its
// definition (std:: distributions differ between standard libraries), so seeded results are the
// same on every platform. Not cryptographic.
#pragma once

#include <cstdint>

namespace xt {

// Advances `state` and returns the next 64 random bits.
inline uint64_t SplitMix64(uint64_t* state) {
  uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// A uniform double in the open interval (0, 1) from the next 53 bits of `state`.
inline double UniformOpen01(uint64_t* state) {
  return (double(SplitMix64(state) >> 11) + 0.5) * 0x1.0p-53;
}

}  // namespace xt
