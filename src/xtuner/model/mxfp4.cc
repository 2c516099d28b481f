#include "xtuner/model/mxfp4.h"

#include <cmath>

namespace xt {

void DecodeMxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t groups,
                 float* out) {
  static constexpr float kFp4[16] = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};
  for (int64_t g = 0; g < rows * groups; ++g) {  // (row, group) pairs in memory order
    const int exponent = int(scales[g]) - 127;
    const uint8_t* b = blocks + g * 16;
    float* o = out + g * 32;
    for (int64_t j = 0; j < 16; ++j) {
      o[2 * j] = std::ldexp(kFp4[b[j] & 0x0f], exponent);
      o[2 * j + 1] = std::ldexp(kFp4[b[j] >> 4], exponent);
    }
  }
}

}  // namespace xt
