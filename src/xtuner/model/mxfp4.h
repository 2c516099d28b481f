// MXFP4 (OCP Microscaling FP4), as GPT-OSS's hub checkpoints store their experts: each group of
// 32 consecutive values along a row is 16 bytes of FP4 E2M1 codes, two per byte (the LOW nibble
// holds the even element), plus one E8M0 scale byte s, the group's factor 2^(s - 127):
//   value = kFp4[code] * 2^(s - 127),
//   kFp4 = {0, .5, 1, 1.5, 2, 3, 4, 6, -0, -.5, -1, -1.5, -2, -3, -4, -6}   (bit 3: the sign).
// This is transformers' convert_moe_packed_tensors (integrations/mxfp4.py) before its final
// transpose, exact in fp32: scale byte 0 gives subnormals, 255 overflows (no NaN encoding).
#pragma once

#include <cstdint>

namespace xt {

// out (rows, groups * 32) from blocks (rows, groups, 16) and scales (rows, groups).
void DecodeMxfp4(const uint8_t* blocks, const uint8_t* scales, int64_t rows, int64_t groups,
                 float* out);

}  // namespace xt
