// The pieces the bf16 attention's mma kernels share (internal to attention_mma.cu, the forward,
// and attention_mma_backward.cu): FlashAttention-2 with the scores in registers. The scheme:
//
// Same work items, masks, bf16 roundings and fp32 accumulation as the WMMA kernels
// (attention_bf16_tiles.h: 64-token blocks from each document's first token, a CUDA block of 4
// warps per (block, head), each warp 16 rows of every 64-row tile), but on mma.sync m16n8k16
// with the register layouts of mma_sm80.h, so that a warp's (16 x 64) score tile never leaves
// its registers: each thread holds rows g and g + 8 of it (g = lane / 4), 16 columns each; row
// maxima and sums are reduced over the 4 lanes of a row (t = lane % 4) with a two-step xor
// butterfly, which leaves the same bits in all four; the softmax weights, rounded to bf16 in
// pairs, are the A fragments of the next product as they stand (mma_sm80.h). Operands come from
// shared memory through ldmatrix; the streamed tiles are double-buffered with cp.async (the next
// tile's copies are in flight while this one is used).
//
// Exponentials are exp2 of scores scaled by scale * log2(e) (one MUFU instruction each), the
// running max kept in that base-2 unit; lse is written in natural log units, as the CPU's.
//
// Shared memory: bf16 tiles (64, D + 8): a row stride of 2 D + 16 bytes keeps every row 16-byte
// aligned (ldmatrix, cp.async) and puts 8 consecutive rows' 16-byte pieces on distinct banks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "xtuner/cuda/attention_blocks.h"
#include "xtuner/cuda/mma_sm80.h"

namespace xt::cuda::mmaattn {

using bf16 = __nv_bfloat16;
using detail::Block;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;       // 128
constexpr int kBlk = detail::kBlockTokens;  // tokens of a block = rows of every tile (64)
constexpr int kRows = kBlk / kWarps;        // 16 rows per warp
constexpr int kCols8 = kBlk / 8;            // n8 tiles of a (16, 64) score tile
constexpr unsigned kFullMask = 0xffffffffu;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

// Bytes of a (kBlk, D + 8) bf16 tile, a multiple of 128.
__host__ __device__ inline size_t TileBytes(int D) {
  return (size_t(kBlk) * size_t(D + 8) * sizeof(bf16) + 127) / 128 * 128;
}

// dst (kBlk, D + 8) = the first `valid` rows of src (row stride `stride` elements, D each),
// the other rows zero, by cp.async in the caller's open group. All threads of the block take
// part. src and stride: 16-byte aligned (the launchers' bf16 copies are, and AlignedBf16 makes
// the inputs given in bf16 so).
__device__ inline void LoadTileAsync(bf16* dst, const bf16* src, int64_t stride, int valid, int D) {
  mma::CopyWindowAsync(dst, D + 8, src, stride, 0, 0, kBlk, D, valid, D, kThreads);
}

// s (16, 16 nc used of 64) = a (the warp's 16 rows, row stride ld) times b^T (b: 64 rows), over
// D (a multiple of 16, at most kD). The n8 tiles 2 nc .. 7 are zero.
template <int kD>
__device__ inline void Scores(float (&s)[kCols8][4], const bf16* a, const bf16* b, int ld, int D,
                              int nc, int lane) {
#pragma unroll
  for (int j = 0; j < kCols8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[j][i] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < kD / 16; ++kk) {
    if (kk * 16 < D) {
      uint32_t af[4];
      mma::LdA(af, a, ld, 0, kk * 16, lane);
#pragma unroll
      for (int np = 0; np < kBlk / 16; ++np) {
        if (np < nc) {
          uint32_t bf[4];
          mma::LdBt(bf, b, ld, np * 16, kk * 16, lane);
          mma::MmaHalf(s[2 * np], af, bf, 0);
          mma::MmaHalf(s[2 * np + 1], af, bf, 1);
        }
      }
    }
  }
}

// The A fragments (16 rows, 64 columns in four 16-column steps) of w rounded to bf16.
__device__ inline void PackRows(uint32_t (&p)[kBlk / 16][4], const float (&w)[kCols8][4]) {
#pragma unroll
  for (int kk = 0; kk < kBlk / 16; ++kk) {
    p[kk][0] = mma::Pack(w[2 * kk][0], w[2 * kk][1]);
    p[kk][1] = mma::Pack(w[2 * kk][2], w[2 * kk][3]);
    p[kk][2] = mma::Pack(w[2 * kk + 1][0], w[2 * kk + 1][1]);
    p[kk][3] = mma::Pack(w[2 * kk + 1][2], w[2 * kk + 1][3]);
  }
}

// acc (16, D) += p (16, 16 nc used of 64) times x (the tile's rows 0 .. 16 nc - 1, D columns).
template <int kD>
__device__ inline void Accumulate(float (&acc)[kD / 8][4], const uint32_t (&p)[kBlk / 16][4],
                                  const bf16* x, int ld, int D, int nc, int lane) {
#pragma unroll
  for (int kk = 0; kk < kBlk / 16; ++kk) {
    if (kk < nc) {
#pragma unroll
      for (int np = 0; np < kD / 16; ++np) {
        if (np * 16 < D) {
          uint32_t bf[4];
          mma::LdB(bf, x, ld, np * 16, kk * 16, lane);
          mma::MmaHalf(acc[2 * np], p[kk], bf, 0);
          mma::MmaHalf(acc[2 * np + 1], p[kk], bf, 1);
        }
      }
    }
  }
}

// Writes rows 0 .. nrows - 1 of the warp's (16, D) accumulator to dst (row stride `stride`
// floats), row g scaled by mul0 and row g + 8 by mul1 (this thread's two rows).
template <int kD>
__device__ inline void StoreRows(float* dst, int64_t stride, const float (&acc)[kD / 8][4],
                                 float mul0, float mul1, int nrows, int D, int lane) {
  const int g = lane / 4, t = lane % 4;
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    if (j * 8 < D) {
      const int c = 8 * j + 2 * t;
      if (g < nrows) {
        dst[g * stride + c] = acc[j][0] * mul0;
        dst[g * stride + c + 1] = acc[j][1] * mul0;
      }
      if (g + 8 < nrows) {
        dst[(g + 8) * stride + c] = acc[j][2] * mul1;
        dst[(g + 8) * stride + c + 1] = acc[j][3] * mul1;
      }
    }
  }
}

// A (64-query block, q head) work item (forward, dQ: item = block index * Hq + q head) as one
// thread sees it: the warp's rows r0 .. r0 + 15 of the block, this thread's two tokens (rows
// g and g + 8 of the warp), and the key tiles it streams, 64 keys each from the document's first
// token up to the block's last query (its causal keys).
struct QueryItem {
  Block b;
  int64_t h, kvh;
  int r0, last;           // the warp's first row in the block and its last valid one (< r0: none)
  int64_t pos[2];         // this thread's tokens (rows g, g + 8)
  bool ok[2];             // whether they are in the block
  int64_t warp_last_pos;  // the warp's last valid token
  int ntiles;             // key tiles

  __device__ QueryItem(const Block* blocks, int64_t Hq, int64_t Hkv, int warp, int g) {
    const int64_t item = blockIdx.x;
    b = blocks[item / Hq];
    h = item % Hq;
    kvh = h / (Hq / Hkv);
    r0 = warp * kRows;
    last = min(r0 + kRows, b.n) - 1;
    pos[0] = int64_t(b.begin) + r0 + g;
    pos[1] = pos[0] + 8;
    ok[0] = r0 + g < b.n;
    ok[1] = r0 + g + 8 < b.n;
    warp_last_pos = int64_t(b.begin) + last;
    ntiles = int((int64_t(b.begin) + b.n - b.doc_begin + kBlk - 1) / kBlk);
  }
  // Key tile it: its first key, and how many of its 64 are in the document.
  __device__ int64_t KeyStart(int it) const { return b.doc_begin + int64_t(it) * kBlk; }
  __device__ int KeyCount(int it) const {
    return int(min(int64_t(kBlk), int64_t(b.doc_end) - KeyStart(it)));
  }
  // Whether some row of the warp sees a key of tile it (warp-uniform), and then the 16-key
  // chunks 0 .. Chunks(it) - 1 that hold every key a row of the warp sees.
  __device__ bool WarpSees(int it) const { return last >= r0 && KeyStart(it) <= warp_last_pos; }
  __device__ int Chunks(int it) const {
    return min((KeyCount(it) + 15) / 16, int((warp_last_pos - KeyStart(it)) / 16) + 1);
  }
  // Whether every row of the warp is in the block and sees every key of tile it (warp-uniform):
  // then no score of the tile needs a mask (the interior tiles of a long document).
  __device__ bool Unmasked(int it) const {
    return last - r0 == kRows - 1 && KeyCount(it) == kBlk &&
           KeyStart(it) + kBlk - 1 <= int64_t(b.begin) + r0;
  }
  // Whether element i (0 .. 3) of n8 tile j of a (16, 64) score tile against key tile it, held
  // by the thread with t = lane % 4, is a key its query sees.
  __device__ bool Seen(int it, int j, int i, int t) const {
    const int c = 8 * j + 2 * t + i % 2;
    return ok[i / 2] && c < KeyCount(it) && KeyStart(it) + c <= pos[i / 2];
  }
  // Copies key tile it of this item's kv head into ks, vs (cp.async, the caller's open group).
  __device__ void LoadKeys(bf16* ks, bf16* vs, const bf16* k, const bf16* v, int64_t Hkv, int D,
                           int it) const {
    const int64_t at = (KeyStart(it) * Hkv + kvh) * D;
    LoadTileAsync(ks, k + at, Hkv * D, KeyCount(it), D);
    LoadTileAsync(vs, v + at, Hkv * D, KeyCount(it), D);
  }
};

// The maximum (sum) over the 4 lanes of a row: the same bits in all four.
__device__ inline float QuadMax(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFullMask, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFullMask, x, 2));
}
__device__ inline float QuadSum(float x) {
  x += __shfl_xor_sync(kFullMask, x, 1);
  return x + __shfl_xor_sync(kFullMask, x, 2);
}

}  // namespace xt::cuda::mmaattn
