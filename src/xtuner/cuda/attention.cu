// Packed causal GQA attention on the GPU (ops::attention_forward / attention_backward), fp32 SIMT,
// FlashAttention-2 style as the CPU twin (ops/cpu/attention.cc).
//
// Blocks: each document is cut into blocks of kHeld = 64 tokens counted from its first token,
// exactly as on the CPU. The list is made on the host from the host's cu_seqlens and copied to
// the device; a CUDA block (256 threads) is one work item:
//   forward      (query block, q head):  Q tile held in shared memory, K/V streamed in tiles of
//                kStream = 32 keys over the causal keys of its document, online softmax in fp32
//                (running max m and sum l per row), out = acc / l, lse = m + log(l); with a sink
//                (GPT-OSS) its logit joins the denominator at the end: out = acc e^m / (l e^m +
//                e^sink), lse = log(l e^m + e^sink).
//   delta        one warp per (token, q head): delta = <dout, out>.
//   dsinks       (sinks only) one block per q head: dsinks -= sum_t exp(sink - lse) delta.
//   dK, dV       (key block, kv head): K/V tile held, the group's q heads in order, and for each
//                the query tiles (32 rows) from the key block to the document's end, in order:
//                p = exp(s - lse), ds = p (dp - delta), dv += p^T dout, dk += ds^T q (* scale).
//   dQ           (query block, q head): Q/dO tile held, K/V streamed as in the forward:
//                dq += ds k (* scale).
// A sliding window (GPT-OSS) masks the keys a query does not see and skips the tiles no query
// of the item sees: the forward and dQ start at the tile holding the block's first query's first
// key, dK/dV stop after the last query that sees the block's last key.
// Every output element is owned by one thread of one CUDA block and reduced in a fixed order:
// no atomics, bit-identical results from run to run (for a given binary and GPU model).
//
// Thread layout of a CUDA block: 16 x 16 (ty = tid / 16, tx = tid % 16). Thread (ty, tx) owns held
// rows 4 ty .. 4 ty + 3 and streamed columns tx, tx + 16 of each 64 x 32 score tile (so the 16
// threads of a held row are one half-warp: row max and sum are half-warp shuffles), and of each
// 64 x D accumulator the same 4 rows and the columns d = tx + 16 jj (registers: D rounded up to
// kDmax in {64, 128, 256}, a template parameter). D > 256 is rejected.
//
// Shared memory rows are padded to an odd stride Dp = D | 1, so that the 16 threads reading 16
// different streamed rows at the same d hit 16 different banks.
//
// Speed ideas, not done yet (correctness and determinism first): tensor cores (wmma / mma.sync
// with tf32 or bf16x3 for fp32 accuracy, or wgmma on sm_90); larger register micro-tiles
// (8 x 4) with float4 shared loads; cp.async / TMA double-buffering of the streamed K/V (or Q/dO)
// tiles; vectorised float4 global loads when D % 4 == 0; a D-specialised kernel (no masked
// columns for D = 40 in the 64 bucket); fusing the delta kernel into the dQ pass; a persistent
// grid with a work queue ordered by cost instead of one CUDA block per item.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/cuda/attention_blocks.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/ops_cuda.h"

namespace xt::cuda {
namespace {

constexpr int kThreads = 256;                // 16 x 16
constexpr int kHeld = detail::kBlockTokens;  // rows of the held tile (= the CPU's kBlock)
constexpr int kStream = 32;                  // rows of a streamed tile
constexpr int kWStride = kStream + 1;        // row stride of the (kHeld, kStream) weight tiles
constexpr int kMaxHeadDim = 256;
constexpr unsigned kFullMask = 0xffffffffu;

using detail::Block;
using detail::PrepareSmem;
using detail::UploadBlocks;

// dst (rows, Dp) = the first `valid` rows of src (row stride src_stride, D floats each), the
// other rows zero. All threads of the block take part.
__device__ inline void LoadRows(float* dst, int Dp, const float* src, int64_t src_stride, int valid,
                                int rows, int D) {
  for (int idx = threadIdx.x; idx < rows * D; idx += kThreads) {
    const int r = idx / D, d = idx - r * D;
    dst[r * Dp + d] = r < valid ? src[r * src_stride + d] : 0.0f;
  }
}

// s[r][c] = <ha row 4 ty + r, sa row tx + 16 c> and t[r][c] = <hb row .., sb row ..> over D: the
// thread's 4 x 2 micro-tiles of two score tiles (held rows x streamed rows), summed in d order.
__device__ inline void Dots2(float (&s)[4][2], float (&t)[4][2], const float* ha, const float* sa,
                             const float* hb, const float* sb, int Dp, int D, int ty, int tx) {
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 2; ++c) s[r][c] = t[r][c] = 0.0f;
  const int h0 = 4 * ty * Dp, s0 = tx * Dp, s1 = (tx + 16) * Dp;
#pragma unroll 4
  for (int d = 0; d < D; ++d) {
    const float a0 = sa[s0 + d], a1 = sa[s1 + d], b0 = sb[s0 + d], b1 = sb[s1 + d];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = ha[h0 + r * Dp + d], y = hb[h0 + r * Dp + d];
      s[r][0] = fmaf(x, a0, s[r][0]);
      s[r][1] = fmaf(x, a1, s[r][1]);
      t[r][0] = fmaf(y, b0, t[r][0]);
      t[r][1] = fmaf(y, b1, t[r][1]);
    }
  }
}

// The single-tile version of Dots2 (the forward).
__device__ inline void Dots(float (&s)[4][2], const float* ha, const float* sa, int Dp, int D,
                            int ty, int tx) {
#pragma unroll
  for (int r = 0; r < 4; ++r) s[r][0] = s[r][1] = 0.0f;
  const int h0 = 4 * ty * Dp, s0 = tx * Dp, s1 = (tx + 16) * Dp;
#pragma unroll 4
  for (int d = 0; d < D; ++d) {
    const float a0 = sa[s0 + d], a1 = sa[s1 + d];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = ha[h0 + r * Dp + d];
      s[r][0] = fmaf(x, a0, s[r][0]);
      s[r][1] = fmaf(x, a1, s[r][1]);
    }
  }
}

// acc[r][jj] += sum over c < n (in order) of w (kHeld, kWStride)[4 ty + r][c] * x (kStream, Dp)
// [c][tx + 16 jj], for the columns tx + 16 jj < D. The w rows read here were written by this
// thread's own half-warp (callers __syncwarp() in between).
template <int kDmax>
__device__ inline void Accumulate(float (&acc)[4][kDmax / 16], const float* w, const float* x,
                                  int n, int Dp, int D, int ty, int tx) {
  for (int c = 0; c < n; ++c) {
    float wr[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) wr[r] = w[(4 * ty + r) * kWStride + c];
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) {
      const int d = tx + 16 * jj;
      const float xv = d < D ? x[c * Dp + d] : 0.0f;
#pragma unroll
      for (int r = 0; r < 4; ++r) acc[r][jj] = fmaf(wr[r], xv, acc[r][jj]);
    }
  }
}

// Max / sum over the 16 threads of a half-warp (a held row), by a fixed butterfly: every thread
// of the half-warp ends with the same bits (float + and max are commutative).
__device__ inline float HalfWarpMax(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, off));
  return x;
}
__device__ inline float HalfWarpSum(float x) {
#pragma unroll
  for (int off = 8; off > 0; off /= 2) x += __shfl_xor_sync(kFullMask, x, off);
  return x;
}

// Whether query i sees key j of its document: causal (j <= i), and within the sliding window of
// `window` keys (itself included) when window > 0.
__device__ inline bool Sees(int64_t i, int64_t j, int64_t window) {
  return j <= i && (window == 0 || i - j < window);
}

// The first streamed key tile (counted from the document's first token) that a query of block b
// sees: the document's first, or with a window the one holding b's first query's first key.
__device__ inline int64_t FirstKeyTile(const Block& b, int64_t window) {
  if (window == 0) return b.doc_begin;
  const int64_t lo = max(int64_t(b.doc_begin), int64_t(b.begin) - window + 1);
  return b.doc_begin + (lo - b.doc_begin) / kStream * kStream;
}

// dsinks[h] -= sum over tokens t of exp(sinks[h] - lse[t, h]) delta[t, h], in double: one block
// per q head, the threads' strided partial sums added by a fixed tree (no atomics).
__global__ void SinkGradKernel(float* dsinks, const float* sinks, const float* lse,
                               const float* delta, int64_t T, int64_t Hq) {
  __shared__ double part[kThreads];
  const int tid = threadIdx.x;
  for (int64_t h = blockIdx.x; h < Hq; h += gridDim.x) {
    double sum = 0;
    for (int64_t t = tid; t < T; t += kThreads)
      sum += exp(double(sinks[h]) - double(lse[t * Hq + h])) * double(delta[t * Hq + h]);
    part[tid] = sum;
    __syncthreads();
    for (int w = kThreads / 2; w > 0; w /= 2) {
      if (tid < w) part[tid] += part[tid + w];
      __syncthreads();
    }
    if (tid == 0) dsinks[h] -= float(part[0]);
    __syncthreads();  // part[0] read before the next head writes part
  }
}

// Shared memory (floats) of each kernel for head dim D.
size_t ForwardSmemFloats(int64_t D) {
  return size_t((kHeld + 2 * kStream) * (D | 1) + kHeld * kWStride);
}
size_t BackwardQSmemFloats(int64_t D) {
  return size_t((2 * kHeld + 2 * kStream) * (D | 1) + kHeld * kWStride + 2 * kHeld);
}
size_t BackwardKvSmemFloats(int64_t D) {
  return size_t((2 * kHeld + 2 * kStream) * (D | 1) + 2 * kHeld * kWStride + 2 * kStream);
}

// Item blockIdx.x = block index * Hq + q head (blocks ordered by decreasing cost).
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardKernel(float* out, float* lse, const float* q, const float* k, const float* v,
                           const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale,
                           const float* sinks, int64_t window) {
  XT_DYNAMIC_SHARED(float, smem);
  const int Dp = D | 1;
  float* qs = smem;               // (kHeld, Dp)
  float* ks = qs + kHeld * Dp;    // (kStream, Dp)
  float* vs = ks + kStream * Dp;  // (kStream, Dp)
  float* ps = vs + kStream * Dp;  // (kHeld, kWStride)
  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hq];
  const int64_t h = item % Hq, g = h / (Hq / Hkv);
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

  LoadRows(qs, Dp, q + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, kHeld, D);
  float m[4], l[4], acc[4][kDmax / 16];
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    m[r] = -INFINITY;
    l[r] = 0.0f;
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) acc[r][jj] = 0.0f;
  }
  // Keys [doc_begin, begin + n): the causal keys of the block's last query; with a window, from
  // the tile holding the first key its first query sees.
  for (int64_t j0 = FirstKeyTile(b, window); j0 < int64_t(b.begin) + b.n; j0 += kStream) {
    const int kn = int(min(int64_t(kStream), int64_t(b.doc_end) - j0));
    __syncthreads();  // the previous tile is no longer read
    LoadRows(ks, Dp, k + (j0 * Hkv + g) * D, Hkv * D, kn, kStream, D);
    LoadRows(vs, Dp, v + (j0 * Hkv + g) * D, Hkv * D, kn, kStream, D);
    __syncthreads();
    float s[4][2];
    Dots(s, qs, ks, Dp, D, ty, tx);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = 4 * ty + r;
      const int64_t qpos = int64_t(b.begin) + row;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = tx + 16 * c;
        const bool valid = row < b.n && col < kn && Sees(qpos, j0 + col, window);
        s[r][c] = valid ? s[r][c] * scale : -INFINITY;
      }
      const float mx = fmaxf(m[r], HalfWarpMax(fmaxf(s[r][0], s[r][1])));
      // A row with no valid key yet (only rows past the block's end) keeps l = 0, acc = 0.
      const float base = mx == -INFINITY ? 0.0f : mx;
      const float p0 = expf(s[r][0] - base), p1 = expf(s[r][1] - base);
      const float corr = expf(m[r] - base);  // 0 on the first tile (m = -inf)
      l[r] = l[r] * corr + HalfWarpSum(p0 + p1);
      m[r] = mx;
#pragma unroll
      for (int jj = 0; jj < kDmax / 16; ++jj) acc[r][jj] *= corr;
      ps[row * kWStride + tx] = p0;
      ps[row * kWStride + tx + 16] = p1;
    }
    __syncwarp();
    Accumulate<kDmax>(acc, ps, vs, kn, Dp, D, ty, tx);  // acc += p @ v tile (masked p are 0)
  }
  // Every row saw at least itself (m finite, l >= 1). The sink joins the denominator
  // l e^m + e^sink relative to M = max(m, sink), as the CPU twin; with no sink (-inf) M = m,
  // e^(m - M) = 1: out = acc / l, lse = m + log(l).
  const float sink = sinks ? sinks[h] : -INFINITY;
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = 4 * ty + r;
    if (row >= b.n) continue;
    const int64_t o = (int64_t(b.begin) + row) * Hq + h;
    const float big = fmaxf(m[r], sink);
    const float em = expf(m[r] - big);
    const float denom = l[r] * em + expf(sink - big);
    const float inv = em / denom;
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) {
      const int d = tx + 16 * jj;
      if (d < D) out[o * D + d] = acc[r][jj] * inv;
    }
    if (tx == 0) lse[o] = big + logf(denom);
  }
}

// delta (rows) = <dout row, out row> (rows = T * Hq, D each): one warp per row, the lanes' strided
// partial sums added by a fixed butterfly.
__global__ void AttentionDeltaKernel(float* delta, const float* dout, const float* out,
                                     int64_t rows, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = detail::GridThreads() / 32;
  for (int64_t r = detail::GlobalThread() / 32; r < rows; r += warps) {  // uniform in the warp
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s = fmaf(dout[r * D + d], out[r * D + d], s);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(kFullMask, s, off);
    if (lane == 0) delta[r] = s;
  }
}

// dk, dv of one (key block, kv head): item blockIdx.x = block index * Hkv + kv head.
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardKvKernel(float* dk, float* dv, const float* dout, const float* lse,
                              const float* delta, const float* q, const float* k, const float* v,
                              const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale,
                              int64_t window) {
  XT_DYNAMIC_SHARED(float, smem);
  const int Dp = D | 1;
  float* ks = smem;                       // (kHeld, Dp)
  float* vs = ks + kHeld * Dp;            // (kHeld, Dp)
  float* qs = vs + kHeld * Dp;            // (kStream, Dp)
  float* dos = qs + kStream * Dp;         // (kStream, Dp)
  float* pt = dos + kStream * Dp;         // (kHeld, kWStride): p^T
  float* dst = pt + kHeld * kWStride;     // (kHeld, kWStride): ds^T
  float* lse_s = dst + kHeld * kWStride;  // (kStream)
  float* delta_s = lse_s + kStream;       // (kStream)
  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hkv];
  const int64_t g = item % Hkv, group = Hq / Hkv;
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

  LoadRows(ks, Dp, k + (int64_t(b.begin) * Hkv + g) * D, Hkv * D, b.n, kHeld, D);
  LoadRows(vs, Dp, v + (int64_t(b.begin) * Hkv + g) * D, Hkv * D, b.n, kHeld, D);
  float dka[4][kDmax / 16], dva[4][kDmax / 16];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) dka[r][jj] = dva[r][jj] = 0.0f;

  // Queries [begin, doc_end): all that see a key of this block; with a window, up to the last
  // that sees its last key.
  const int64_t q_end =
      window > 0 ? min(int64_t(b.doc_end), int64_t(b.begin) + b.n - 1 + window) : b.doc_end;
  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (int64_t i0 = b.begin; i0 < q_end; i0 += kStream) {
      const int qn = int(min(int64_t(kStream), int64_t(b.doc_end) - i0));
      __syncthreads();  // the previous tile is no longer read
      LoadRows(qs, Dp, q + (i0 * Hq + h) * D, Hq * D, qn, kStream, D);
      LoadRows(dos, Dp, dout + (i0 * Hq + h) * D, Hq * D, qn, kStream, D);
      if (tid < kStream) {
        lse_s[tid] = tid < qn ? lse[(i0 + tid) * Hq + h] : 0.0f;
        delta_s[tid] = tid < qn ? delta[(i0 + tid) * Hq + h] : 0.0f;
      }
      __syncthreads();
      float s[4][2], dp[4][2];  // s^T = k q^T, dp^T = v dout^T
      Dots2(s, dp, ks, qs, vs, dos, Dp, D, ty, tx);
#pragma unroll
      for (int r = 0; r < 4; ++r) {
        const int row = 4 * ty + r;
        const int64_t kpos = int64_t(b.begin) + row;
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = tx + 16 * c;
          float p = 0.0f, ds = 0.0f;
          if (row < b.n && col < qn && Sees(i0 + col, kpos, window)) {
            p = expf(s[r][c] * scale - lse_s[col]);
            ds = p * (dp[r][c] - delta_s[col]);
          }
          pt[row * kWStride + col] = p;
          dst[row * kWStride + col] = ds;
        }
      }
      __syncwarp();
      Accumulate<kDmax>(dva, pt, dos, qn, Dp, D, ty, tx);  // dv += p^T dout
      Accumulate<kDmax>(dka, dst, qs, qn, Dp, D, ty, tx);  // dk += ds^T q
    }
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = 4 * ty + r;
    if (row >= b.n) continue;
    const int64_t o = ((int64_t(b.begin) + row) * Hkv + g) * D;
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) {
      const int d = tx + 16 * jj;
      if (d < D) {
        dk[o + d] = dka[r][jj] * scale;
        dv[o + d] = dva[r][jj];
      }
    }
  }
}

// dq of one (query block, q head): item blockIdx.x = block index * Hq + q head.
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardQKernel(float* dq, const float* dout, const float* lse, const float* delta,
                             const float* q, const float* k, const float* v, const Block* blocks,
                             int64_t Hq, int64_t Hkv, int D, float scale, int64_t window) {
  XT_DYNAMIC_SHARED(float, smem);
  const int Dp = D | 1;
  float* qs = smem;                       // (kHeld, Dp)
  float* dos = qs + kHeld * Dp;           // (kHeld, Dp)
  float* ks = dos + kHeld * Dp;           // (kStream, Dp)
  float* vs = ks + kStream * Dp;          // (kStream, Dp)
  float* dss = vs + kStream * Dp;         // (kHeld, kWStride)
  float* lse_s = dss + kHeld * kWStride;  // (kHeld)
  float* delta_s = lse_s + kHeld;         // (kHeld)
  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hq];
  const int64_t h = item % Hq, g = h / (Hq / Hkv);
  const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;

  LoadRows(qs, Dp, q + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, kHeld, D);
  LoadRows(dos, Dp, dout + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, kHeld, D);
  if (tid < kHeld) {
    lse_s[tid] = tid < b.n ? lse[(int64_t(b.begin) + tid) * Hq + h] : 0.0f;
    delta_s[tid] = tid < b.n ? delta[(int64_t(b.begin) + tid) * Hq + h] : 0.0f;
  }
  float acc[4][kDmax / 16];
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) acc[r][jj] = 0.0f;

  for (int64_t j0 = FirstKeyTile(b, window); j0 < int64_t(b.begin) + b.n; j0 += kStream) {
    const int kn = int(min(int64_t(kStream), int64_t(b.doc_end) - j0));
    __syncthreads();  // the previous tile is no longer read
    LoadRows(ks, Dp, k + (j0 * Hkv + g) * D, Hkv * D, kn, kStream, D);
    LoadRows(vs, Dp, v + (j0 * Hkv + g) * D, Hkv * D, kn, kStream, D);
    __syncthreads();
    float s[4][2], dp[4][2];  // s = q k^T, dp = dout v^T
    Dots2(s, dp, qs, ks, dos, vs, Dp, D, ty, tx);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int row = 4 * ty + r;
      const int64_t qpos = int64_t(b.begin) + row;
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int col = tx + 16 * c;
        float ds = 0.0f;
        if (row < b.n && col < kn && Sees(qpos, j0 + col, window)) {
          const float p = expf(s[r][c] * scale - lse_s[row]);
          ds = p * (dp[r][c] - delta_s[row]);
        }
        dss[row * kWStride + col] = ds;
      }
    }
    __syncwarp();
    Accumulate<kDmax>(acc, dss, ks, kn, Dp, D, ty, tx);  // dq += ds k
  }
#pragma unroll
  for (int r = 0; r < 4; ++r) {
    const int row = 4 * ty + r;
    if (row >= b.n) continue;
    const int64_t o = ((int64_t(b.begin) + row) * Hq + h) * D;
#pragma unroll
    for (int jj = 0; jj < kDmax / 16; ++jj) {
      const int d = tx + 16 * jj;
      if (d < D) dq[o + d] = acc[r][jj] * scale;
    }
  }
}

// The arguments the shared planner leaves to each kernel family: the head dims it supports.
Status PlanAttention(const char* op, const int32_t* cu, int64_t num_docs, int64_t T, int64_t Hq,
                     int64_t Hkv, int64_t D, std::vector<Block>* by_q, std::vector<Block>* by_kv) {
  XT_RETURN_IF_ERROR(detail::PlanBlocks(op, cu, num_docs, T, Hq, Hkv, D, by_q, by_kv));
  if (D < 1 || D > kMaxHeadDim)
    return Status::Error(std::string(op) + ": head dim D = " + std::to_string(D) +
                         " is not in [1, " + std::to_string(kMaxHeadDim) + "]");
  return Status::OK();
}

Status CheckWindow(const char* op, const ops::AttentionExtras& extras) {
  if (extras.window < 0)
    return Status::Error(std::string(op) + ": window must be >= 0, got " +
                         std::to_string(extras.window));
  return Status::OK();
}

template <int kDmax>
Status LaunchForward(float* out, float* lse, const float* q, const float* k, const float* v,
                     const Block* blocks, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D,
                     float scale, const ops::AttentionExtras& extras, cudaStream_t st) {
  const size_t floats = ForwardSmemFloats(D);
  XT_RETURN_IF_ERROR(
      PrepareSmem(AttentionForwardKernel<kDmax>, floats * sizeof(float), "attention_forward"));
  XT_LAUNCH(AttentionForwardKernel<kDmax>, unsigned(nb * Hq), kThreads, floats * sizeof(float), st)
  (out, lse, q, k, v, blocks, Hq, Hkv, int(D), scale, extras.sinks, extras.window);
  return Check(cudaGetLastError(), "attention_forward launch");
}

template <int kDmax>
Status LaunchBackward(float* dq, float* dk, float* dv, const float* dout, const float* lse,
                      const float* delta, const float* q, const float* k, const float* v,
                      const Block* by_q, const Block* by_kv, int64_t nb, int64_t Hq, int64_t Hkv,
                      int64_t D, float scale, int64_t window, cudaStream_t st) {
  const size_t kv_floats = BackwardKvSmemFloats(D), q_floats = BackwardQSmemFloats(D);
  XT_RETURN_IF_ERROR(PrepareSmem(AttentionBackwardKvKernel<kDmax>, kv_floats * sizeof(float),
                                 "attention_backward (dk, dv)"));
  XT_RETURN_IF_ERROR(PrepareSmem(AttentionBackwardQKernel<kDmax>, q_floats * sizeof(float),
                                 "attention_backward (dq)"));
  XT_LAUNCH(AttentionBackwardKvKernel<kDmax>, unsigned(nb * Hkv), kThreads,
            kv_floats * sizeof(float), st)
  (dk, dv, dout, lse, delta, q, k, v, by_kv, Hq, Hkv, int(D), scale, window);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "attention_backward (dk, dv) launch"));
  XT_LAUNCH(AttentionBackwardQKernel<kDmax>, unsigned(nb * Hq), kThreads, q_floats * sizeof(float),
            st)
  (dq, dout, lse, delta, q, k, v, by_q, Hq, Hkv, int(D), scale, window);
  return Check(cudaGetLastError(), "attention_backward (dq) launch");
}

}  // namespace

Status AttentionForward(float* out, float* lse, const float* q, const float* k, const float* v,
                        const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                        int64_t Hkv, int64_t D, float scale, void* stream,
                        const ops::AttentionExtras& extras) {
  std::vector<Block> by_q, by_kv;
  XT_RETURN_IF_ERROR(
      PlanAttention("attention_forward", cu_seqlens, num_docs, T, Hq, Hkv, D, &by_q, &by_kv));
  XT_RETURN_IF_ERROR(CheckWindow("attention_forward", extras));
  if (T == 0) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  const int64_t nb = int64_t(by_q.size());
  detail::Scratch scratch(st);
  const Block* blocks = nullptr;
  Status s = UploadBlocks(scratch, by_q, by_kv, &blocks, st, "attention_forward blocks");
  if (s.ok()) {
    if (D <= 64)
      s = LaunchForward<64>(out, lse, q, k, v, blocks, nb, Hq, Hkv, D, scale, extras, st);
    else if (D <= 128)
      s = LaunchForward<128>(out, lse, q, k, v, blocks, nb, Hq, Hkv, D, scale, extras, st);
    else
      s = LaunchForward<256>(out, lse, q, k, v, blocks, nb, Hq, Hkv, D, scale, extras, st);
  }
  const Status freed = scratch.Release("attention_forward blocks free");
  return s.ok() ? freed : s;
}

Status AttentionBackward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                         const float* lse, const float* q, const float* k, const float* v,
                         const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                         int64_t Hkv, int64_t D, float scale, void* stream,
                         const ops::AttentionExtras& extras, float* dsinks) {
  std::vector<Block> by_q, by_kv;
  XT_RETURN_IF_ERROR(
      PlanAttention("attention_backward", cu_seqlens, num_docs, T, Hq, Hkv, D, &by_q, &by_kv));
  XT_RETURN_IF_ERROR(CheckWindow("attention_backward", extras));
  if (T == 0) return Status::OK();
  const cudaStream_t st = cudaStream_t(stream);
  const int64_t nb = int64_t(by_q.size());
  detail::Scratch scratch(st);
  const Block* blocks = nullptr;
  float* delta = nullptr;  // (T, Hq)
  Status s = UploadBlocks(scratch, by_q, by_kv, &blocks, st, "attention_backward scratch");
  if (s.ok()) s = scratch.Alloc(&delta, T * Hq, "attention_backward scratch");
  if (s.ok()) {
    XT_LAUNCH(AttentionDeltaKernel, detail::BlocksFor(T * Hq * 32), kThreads, 0, st)
    (delta, dout, out, T * Hq, int(D));
    s = Check(cudaGetLastError(), "attention_backward (delta) launch");
    if (s.ok() && extras.sinks && dsinks) {
      XT_LAUNCH(SinkGradKernel, unsigned(std::min<int64_t>(Hq, detail::kMaxBlocks)), kThreads, 0,
                st)
      (dsinks, extras.sinks, lse, delta, T, Hq);
      s = Check(cudaGetLastError(), "attention_backward (sinks) launch");
    }
    if (s.ok()) {
      if (D <= 64)
        s = LaunchBackward<64>(dq, dk, dv, dout, lse, delta, q, k, v, blocks, blocks + nb, nb, Hq,
                               Hkv, D, scale, extras.window, st);
      else if (D <= 128)
        s = LaunchBackward<128>(dq, dk, dv, dout, lse, delta, q, k, v, blocks, blocks + nb, nb, Hq,
                                Hkv, D, scale, extras.window, st);
      else
        s = LaunchBackward<256>(dq, dk, dv, dout, lse, delta, q, k, v, blocks, blocks + nb, nb, Hq,
                                Hkv, D, scale, extras.window, st);
    }
  }
  const Status freed = scratch.Release("attention_backward scratch free");
  return s.ok() ? freed : s;
}

}  // namespace xt::cuda
