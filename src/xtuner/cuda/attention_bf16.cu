// Packed causal GQA attention on tensor cores (attention_bf16.h): bf16 WMMA products with fp32
// accumulators, FlashAttention-2 style, the twin of the fp32 SIMT kernels in attention.cu.
//
// Blocks: each document is cut into blocks of kBlk = 64 tokens counted from its first token, as
// on the CPU and in attention.cu; the list is made on the host from the host's cu_seqlens and
// copied to the device. A CUDA block is 4 warps (128 threads) and one work item; every tile is
// 64 rows, each warp owns 16 of them (one WMMA tile high), and the streamed tiles are 64 rows:
//   forward   (query block, q head): Q tile held, K/V streamed in 64-key tiles over the causal
//             keys of its document. Per warp: S = Q K^T (16 x 64, WMMA) stored to shared fp32;
//             online softmax there in fp32 (running max m and sum l per row, held by the two
//             lanes of the row); P rounded to bf16 into shared; the O accumulator (16 x D) stays
//             in WMMA fragments, rescaled per row (see FragRows), O += P V (WMMA). At the end
//             out = O / l, lse = m + log(l).
//   delta     one warp per (token, q head): delta = <bf16(dout), out>, fp32 (see the kernel).
//   dK, dV    (key block, kv head): K/V tile held, the group's q heads in order, and for each the
//             64-query tiles from the key block to the document's end, in order. Per warp (16
//             keys): S^T = K Q^T, dP^T = V dO^T (WMMA, stored to shared fp32), p = exp(s * scale
//             - lse), ds = p (dp - delta) in fp32, rounded to bf16; dV += P^T dO, dK += dS^T Q
//             (WMMA, accumulators in fragments for the whole item); dk = dK * scale.
//   dQ        (query block, q head): Q/dO tile held, K/V streamed as in the forward. Per warp
//             (16 queries): S = Q K^T, dP = dO V^T, ds as above, dQ += dS K; dq = dQ * scale.
// Every output element is owned by one warp of one CUDA block and reduced in a fixed order: no
// atomics, bit-identical results from run to run (for a given binary and GPU model).
//
// Masking: key j is seen by query i when both are in the document and j <= i. Scores of unseen
// keys are replaced (selected, never multiplied) by -inf in the forward and their p, ds by 0 in
// the backward, so stale shared memory in skipped 16-key chunks never leaks. A row whose keys are
// all unseen so far keeps m = -inf, l = 0: its exps use base 0 (exp(-inf) = 0), never
// exp(-inf - -inf). Tiles and 16-row chunks no row of a warp sees are skipped (warp-uniform).
//
// Shared memory: bf16 tiles (64, D + 8): the 8-element pad makes the row stride 2 D + 16 bytes an
// odd multiple of 16 (D % 16 == 0), so 8 consecutive rows' 16-byte pieces (WMMA's loads) hit
// distinct banks, and keeps 16-row and 16-column steps 32-byte aligned as WMMA requires (ldm a
// multiple of 8). Per-warp fp32 score
// tiles (16, kSld = 68) and bf16 weight tiles (16, kPld = 72). Every buffer starts on a 128-byte
// boundary. Bytes at D = 128: forward 96 768, dK/dV 123 392, dQ 114 176 (1 or 2 blocks per SM).
//
// The inputs are rounded to bf16 once per call (Bf16Copies), so the streamed tiles move half the
// bytes of fp32 and the loops convert nothing.
// Speed ideas, not done yet: mma.sync / wgmma with known fragment layouts (softmax in registers,
// no shared round trip of S), cp.async / TMA double-buffering of the streamed tiles, a
// persistent grid ordered by cost.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/attention_blocks.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda {
namespace {

namespace wmma = nvcuda::wmma;
using bf16 = __nv_bfloat16;

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;       // 128
constexpr int kBlk = detail::kBlockTokens;  // tokens of a block = rows of every tile
constexpr int kRows = kBlk / kWarps;        // 16 rows per warp: one WMMA tile high
constexpr int kSld = kBlk + 4;              // row stride (floats) of a warp's fp32 (16, 64) tiles
constexpr int kPld = kBlk + 8;              // row stride (bf16) of a warp's bf16 (16, 64) tiles
constexpr int kMaxD = 128;
constexpr unsigned kFullMask = 0xffffffffu;

using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
constexpr int kFragElems = FragC::num_elements;  // fp32 elements of a 16 x 16 tile per lane (8)

using detail::Block;
using detail::PrepareSmem;
using detail::UploadBlocks;

// Shared memory sizes (bytes), each a multiple of 128 so that every buffer stays aligned.
__host__ __device__ constexpr size_t Align128(size_t bytes) { return (bytes + 127) / 128 * 128; }
// A (kBlk, D + 8) bf16 tile.
__host__ __device__ inline size_t TileBytes(int D) {
  return Align128(size_t(kBlk) * size_t(D + 8) * sizeof(bf16));
}
// A warp's fp32 scratch: two (16, kSld) tiles (S and dP; the forward uses the first); at the end
// of a work item the warp's (16, D + 4) output stage, which fits for D <= 2 kSld - 4 = 132.
constexpr size_t kWarpF32Bytes = 2 * kRows * kSld * sizeof(float);  // 8704
// One (16, kPld) bf16 tile of a warp (P, P^T, dS or dS^T).
constexpr size_t kWarpBf16Bytes = kRows * kPld * sizeof(bf16);  // 2304
// A warp's per-row factors (16 floats, padded).
constexpr size_t kWarpRowBytes = 128;
// lse and delta of the 64 rows of a tile.
constexpr size_t kRowStatBytes = 2 * kBlk * sizeof(float);  // 512
static_assert(kWarpF32Bytes % 128 == 0 && kWarpBf16Bytes % 128 == 0, "aligned buffers");
static_assert(kRows * (kMaxD + 4) <= 2 * kRows * kSld, "the output stage fits the fp32 scratch");

// forward: Q, K, V tiles | fp32 scratch x 4 warps | P x 4 | row factors x 4.
size_t ForwardSmemBytes(int D) {
  return 3 * TileBytes(D) + kWarps * (kWarpF32Bytes + kWarpBf16Bytes + kWarpRowBytes);
}
// dK/dV: K, V, Q, dO tiles | fp32 scratch x 4 | P^T, dS^T x 4 | lse, delta.
size_t BackwardKvSmemBytes(int D) {
  return 4 * TileBytes(D) + kWarps * (kWarpF32Bytes + 2 * kWarpBf16Bytes) + kRowStatBytes;
}
// dQ: Q, dO, K, V tiles | fp32 scratch x 4 | dS x 4 | lse, delta.
size_t BackwardQSmemBytes(int D) {
  return 4 * TileBytes(D) + kWarps * (kWarpF32Bytes + kWarpBf16Bytes) + kRowStatBytes;
}

// dst (kBlk, D + 8) bf16 = the first `valid` rows of src (row stride `stride` elements, D each:
// the bf16 copies of q, k, v, dout that the launcher rounds once per call, so each tile moves half
// the bytes of fp32 and no conversion sits in the loops), the other rows zero (pad columns
// D .. D + 7 are never read). All threads of the block take part. vec: src and stride allow
// 16-byte loads (8 elements).
[[maybe_unused]] __device__ inline void LoadTile(bf16* dst, const bf16* src, int64_t stride,
                                                 int valid, int D, bool vec) {
  const int ld = D + 8;
  if (vec) {
    const int q8 = D / 8;
    for (int idx = threadIdx.x; idx < kBlk * q8; idx += kThreads) {
      const int r = idx / q8, c = (idx - r * q8) * 8;
      uint4 x = make_uint4(0u, 0u, 0u, 0u);  // bf16 zeros
      if (r < valid) x = *reinterpret_cast<const uint4*>(src + r * stride + c);
      *reinterpret_cast<uint4*>(dst + r * ld + c) = x;  // 16-byte aligned: ld, c multiples of 8
    }
  } else {
    for (int idx = threadIdx.x; idx < kBlk * D; idx += kThreads) {
      const int r = idx / D, c = idx - r * D;
      dst[r * ld + c] = r < valid ? src[r * stride + c] : __float2bfloat16_rn(0.0f);
    }
  }
}

// rows[i] = the row (0 .. 15) of element i of this lane's accumulator fragments. WMMA leaves the
// layout unspecified, but it is one fixed layout for the fragment type (loads, mma and stores
// agree on it), so it is read back from a tile whose elements hold their row index. scratch:
// this warp's fp32 scratch (16 x 16 used, row stride kSld).
[[maybe_unused]] __device__ inline void FragRows(int (&rows)[kFragElems], float* scratch,
                                                 int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  for (int i = lane; i < 16 * 16; i += 32) scratch[(i / 16) * kSld + i % 16] = float(i / 16);
  __syncwarp();
  FragC f;
  wmma::load_matrix_sync(f, scratch, kSld, wmma::mem_row_major);
#pragma unroll
  for (int i = 0; i < kFragElems; ++i) rows[i] = int(f.x[i]);
  __syncwarp();  // the scratch may be overwritten
#endif
}

// Writes rows 0 .. nrows - 1 of the warp's (16, D) fragments acc (scaled by `mul`) to dst (row
// stride `stride` floats) through stage (16, D + 4) fp32. All lanes of the warp take part.
template <int kN>
__device__ inline void StoreRows(float* dst, int64_t stride, FragC (&acc)[kN], float mul,
                                 float* stage, int nrows, int D, int lane) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  const int nD = D / 16;
#pragma unroll
  for (int nd = 0; nd < kN; ++nd) {
    if (nd < nD) {
#pragma unroll
      for (int i = 0; i < kFragElems; ++i) acc[nd].x[i] *= mul;
      wmma::store_matrix_sync(stage + nd * 16, acc[nd], D + 4, wmma::mem_row_major);
    }
  }
  __syncwarp();
  for (int idx = lane; idx < nrows * D; idx += 32) {
    const int r = idx / D, d = idx - r * D;
    dst[r * stride + d] = stage[r * (D + 4) + d];
  }
  __syncwarp();  // the stage may be overwritten
#endif
}

// Item blockIdx.x = block index * Hq + q head (blocks ordered by decreasing cost).
// Warp w owns query rows 16 w .. 16 w + 15 of the block; lane pair (2 r, 2 r + 1) owns softmax
// row r of the warp, lane 2 r + half its columns half + 2 i (i < 32), and both hold its m and l.
// The backward's two score-like products of one 16 x 16 tile, over D (nD steps of 16):
// s = a1 (16 rows, D) b1 (16 rows, D)^T and dp = a2 b2^T, bf16 tiles of row stride ld, stored
// as fp32 to s_out and dp_out (row stride kSld). dK/dV: s^T = K Q^T, dp^T = V dO^T; dQ: s = Q K^T,
// dp = dO V^T. All lanes of the warp take part.
[[maybe_unused]] __device__ inline void TwoProducts(float* s_out, float* dp_out, const bf16* a1,
                                                    const bf16* b1, const bf16* a2, const bf16* b2,
                                                    int ld, int nD) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  FragC s, dp;
  wmma::fill_fragment(s, 0.0f);
  wmma::fill_fragment(dp, 0.0f);
  for (int kk = 0; kk < nD; ++kk) {
    FragA a;
    FragBCol b;
    wmma::load_matrix_sync(a, a1 + kk * 16, ld);
    wmma::load_matrix_sync(b, b1 + kk * 16, ld);
    wmma::mma_sync(s, a, b, s);
    wmma::load_matrix_sync(a, a2 + kk * 16, ld);
    wmma::load_matrix_sync(b, b2 + kk * 16, ld);
    wmma::mma_sync(dp, a, b, dp);
  }
  wmma::store_matrix_sync(s_out, s, kSld, wmma::mem_row_major);
  wmma::store_matrix_sync(dp_out, dp, kSld, wmma::mem_row_major);
#endif
}

template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardBf16Kernel(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                               const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale,
                               bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  constexpr int kN = kDmax / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int nD = D / 16, ld = D + 8;
  const size_t tile = TileBytes(D);
  unsigned char* warp_base = smem + 3 * tile;
  bf16* qs = reinterpret_cast<bf16*>(smem);             // (64, ld): the query block
  bf16* ks = reinterpret_cast<bf16*>(smem + tile);      // (64, ld): a key tile
  bf16* vs = reinterpret_cast<bf16*>(smem + 2 * tile);  // (64, ld): its value tile
  // (16, kSld): this warp's scores; at the end its (16, D + 4) output stage.
  float* sw = reinterpret_cast<float*>(warp_base + warp * kWarpF32Bytes);
  // (16, kPld): this warp's p in bf16.
  bf16* pw = reinterpret_cast<bf16*>(warp_base + kWarps * kWarpF32Bytes + warp * kWarpBf16Bytes);
  // (16): this warp's per-row factor (the rescale corr, at the end 1 / l).
  float* rw = reinterpret_cast<float*>(warp_base + kWarps * (kWarpF32Bytes + kWarpBf16Bytes) +
                                       warp * kWarpRowBytes);

  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hq];
  const int64_t h = item % Hq, g = h / (Hq / Hkv);
  const int r0 = warp * kRows;                // the warp's first row in the block
  const int last = min(r0 + kRows, b.n) - 1;  // its last valid row (< r0: none)
  const int lr = lane / 2, half = lane % 2;   // the lane's softmax row in the warp, column parity
  const bool row_ok = r0 + lr < b.n;
  const int64_t qpos = int64_t(b.begin) + r0 + lr;  // its token
  const int64_t warp_last_pos = int64_t(b.begin) + last;

  LoadTile(qs, q + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, D, vec);
  int rows[kFragElems];
  FragRows(rows, sw, lane);
  FragC o[kN];  // (16, D): the warp's unnormalised output
#pragma unroll
  for (int nd = 0; nd < kN; ++nd) wmma::fill_fragment(o[nd], 0.0f);
  float m = -INFINITY, l = 0.0f;

  // Keys [doc_begin, begin + n): the causal keys of the block's last query.
  for (int64_t j0 = b.doc_begin; j0 < int64_t(b.begin) + b.n; j0 += kBlk) {
    const int kn = int(min(int64_t(kBlk), int64_t(b.doc_end) - j0));
    __syncthreads();  // the previous tile is no longer read
    LoadTile(ks, k + (j0 * Hkv + g) * D, Hkv * D, kn, D, vec);
    LoadTile(vs, v + (j0 * Hkv + g) * D, Hkv * D, kn, D, vec);
    __syncthreads();
    if (last < r0 || j0 > warp_last_pos) continue;  // warp-uniform: no row of it sees this tile
    // 16-key chunks 0 .. nc - 1 hold every key a row of the warp sees.
    const int nc = min((kn + 15) / 16, int((warp_last_pos - j0) / 16) + 1);

    // S (16, 16 nc) = Q rows r0.. K^T.
    for (int nt = 0; nt < nc; ++nt) {
      FragC s;
      wmma::fill_fragment(s, 0.0f);
      for (int kk = 0; kk < nD; ++kk) {
        FragA a;
        FragBCol bk;
        wmma::load_matrix_sync(a, qs + r0 * ld + kk * 16, ld);
        wmma::load_matrix_sync(bk, ks + nt * 16 * ld + kk * 16, ld);
        wmma::mma_sync(s, a, bk, s);
      }
      wmma::store_matrix_sync(sw + nt * 16, s, kSld, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of row lr over the tile's 64 columns (unseen: -inf; beyond chunk nc the
    // scratch is stale, but every such column is unseen).
    float sv[kBlk / 2];
    float tmax = -INFINITY;
#pragma unroll
    for (int i = 0; i < kBlk / 2; ++i) {
      const int c = 2 * i + half;
      const bool seen = row_ok && c < kn && j0 + c <= qpos;
      sv[i] = seen ? sw[lr * kSld + c] * scale : -INFINITY;
      tmax = fmaxf(tmax, sv[i]);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(kFullMask, tmax, 1));
    const float mx = fmaxf(m, tmax);
    const float base = mx == -INFINITY ? 0.0f : mx;  // a row with no seen key yet: p = 0
    float sum = 0.0f;
#pragma unroll
    for (int i = 0; i < kBlk / 2; ++i) {
      const float p = expf(sv[i] - base);
      sum += p;
      pw[lr * kPld + 2 * i + half] = __float2bfloat16_rn(p);
    }
    sum += __shfl_xor_sync(kFullMask, sum, 1);  // a + b == b + a: both lanes get the same bits
    const float corr = expf(m - base);          // 0 while m = -inf
    l = l * corr + sum;
    m = mx;
    if (half == 0) rw[lr] = corr;
    __syncwarp();

    // O = O * corr (per row) + P V.
#pragma unroll
    for (int i = 0; i < kFragElems; ++i) {
      const float cf = rw[rows[i]];
#pragma unroll
      for (int nd = 0; nd < kN; ++nd) o[nd].x[i] *= cf;
    }
    for (int kk = 0; kk < nc; ++kk) {
      FragA a;
      wmma::load_matrix_sync(a, pw + kk * 16, kPld);
#pragma unroll
      for (int nd = 0; nd < kN; ++nd) {
        if (nd < nD) {
          FragBRow bv;
          wmma::load_matrix_sync(bv, vs + kk * 16 * ld + nd * 16, ld);
          wmma::mma_sync(o[nd], a, bv, o[nd]);
        }
      }
    }
    __syncwarp();  // rw and pw are rewritten by the next tile
  }

  if (last < r0) return;  // warp-uniform; no barrier follows
  // out = O / l (l > 0 for every valid row; the others are not written).
  if (half == 0) rw[lr] = l > 0.0f ? 1.0f / l : 0.0f;
  __syncwarp();
#pragma unroll
  for (int i = 0; i < kFragElems; ++i) {
    const float cf = rw[rows[i]];
#pragma unroll
    for (int nd = 0; nd < kN; ++nd) o[nd].x[i] *= cf;
  }
  StoreRows<kN>(out + ((int64_t(b.begin) + r0) * Hq + h) * D, Hq * D, o, 1.0f, sw, last - r0 + 1, D,
                lane);
  if (half == 0 && row_ok) lse[qpos * Hq + h] = m + logf(l);
#endif
}

// delta (rows) = <bf16(dout row), out row> (rows = T * Hq, D each) in fp32: one warp per row, the
// lanes' strided partial sums added by a fixed butterfly. dout is rounded as the dp products see
// it, so that delta = sum_j p_j dp_j holds up to v's rounding (and exactly, up to fp32 sums, for
// a one-token document after the bf16 forward, whose out is bf16(v)): ds = p (dp - delta) is
// then not dominated by dout's rounding where dp and delta nearly cancel.
__global__ void AttentionDeltaBf16Kernel(float* delta, const float* dout, const float* out,
                                         int64_t rows, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = detail::GridThreads() / 32;
  for (int64_t r = detail::GlobalThread() / 32; r < rows; r += warps) {  // uniform in the warp
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
      s = fmaf(__bfloat162float(__float2bfloat16_rn(dout[r * D + d])), out[r * D + d], s);
#pragma unroll
    for (int off = 16; off > 0; off /= 2) s += __shfl_xor_sync(kFullMask, s, off);
    if (lane == 0) delta[r] = s;
  }
}

// dk, dv of one (key block, kv head): item blockIdx.x = block index * Hkv + kv head.
// Warp w owns key rows 16 w .. 16 w + 15 of the block (its dK, dV (16, D) in fragments); lane
// pair (2 r, 2 r + 1) computes p and ds of key row r, lane 2 r + half the query columns half + 2 i.
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardKvBf16Kernel(float* dk, float* dv, const bf16* dout, const float* lse,
                                  const float* delta, const bf16* q, const bf16* k, const bf16* v,
                                  const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale,
                                  bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  constexpr int kN = kDmax / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, tid = int(threadIdx.x);
  const int nD = D / 16, ld = D + 8;
  const size_t tile = TileBytes(D);
  unsigned char* warp_base = smem + 4 * tile;
  bf16* ks = reinterpret_cast<bf16*>(smem);              // (64, ld): the key block
  bf16* vs = reinterpret_cast<bf16*>(smem + tile);       // (64, ld): its values
  bf16* qs = reinterpret_cast<bf16*>(smem + 2 * tile);   // (64, ld): a query tile
  bf16* dos = reinterpret_cast<bf16*>(smem + 3 * tile);  // (64, ld): its dout tile
  // (16, kSld) s^T then (16, kSld) dp^T of this warp; at the end its (16, D + 4) output stage.
  float* sw = reinterpret_cast<float*>(warp_base + warp * kWarpF32Bytes);
  float* dpw = sw + kRows * kSld;
  // (16, kPld) p^T then (16, kPld) ds^T of this warp, in bf16.
  bf16* ptw =
      reinterpret_cast<bf16*>(warp_base + kWarps * kWarpF32Bytes + warp * 2 * kWarpBf16Bytes);
  bf16* dstw = ptw + kRows * kPld;
  // (64) lse and (64) delta of the query tile.
  float* lse_s =
      reinterpret_cast<float*>(warp_base + kWarps * (kWarpF32Bytes + 2 * kWarpBf16Bytes));
  float* delta_s = lse_s + kBlk;

  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hkv];
  const int64_t g = item % Hkv, group = Hq / Hkv;
  const int r0 = warp * kRows;
  const int last = min(r0 + kRows, b.n) - 1;  // the warp's last valid key row (< r0: none)
  const int lr = lane / 2, half = lane % 2;
  const bool row_ok = r0 + lr < b.n;
  const int64_t kpos = int64_t(b.begin) + r0 + lr;  // the lane's key token
  const int64_t warp_first_pos = int64_t(b.begin) + r0;

  LoadTile(ks, k + (int64_t(b.begin) * Hkv + g) * D, Hkv * D, b.n, D, vec);
  LoadTile(vs, v + (int64_t(b.begin) * Hkv + g) * D, Hkv * D, b.n, D, vec);
  FragC dka[kN], dva[kN];  // (16, D) each
#pragma unroll
  for (int nd = 0; nd < kN; ++nd) {
    wmma::fill_fragment(dka[nd], 0.0f);
    wmma::fill_fragment(dva[nd], 0.0f);
  }

  for (int64_t h = g * group; h < (g + 1) * group; ++h) {
    // Queries [begin, doc_end): all that see a key of this block.
    for (int64_t i0 = b.begin; i0 < b.doc_end; i0 += kBlk) {
      const int qn = int(min(int64_t(kBlk), int64_t(b.doc_end) - i0));
      __syncthreads();  // the previous tile is no longer read
      LoadTile(qs, q + (i0 * Hq + h) * D, Hq * D, qn, D, vec);
      LoadTile(dos, dout + (i0 * Hq + h) * D, Hq * D, qn, D, vec);
      if (tid < kBlk) {
        lse_s[tid] = tid < qn ? lse[(i0 + tid) * Hq + h] : 0.0f;
        delta_s[tid] = tid < qn ? delta[(i0 + tid) * Hq + h] : 0.0f;
      }
      __syncthreads();
      if (last < r0) continue;  // warp-uniform
      // 16-query chunks c0 .. c1 - 1 hold every query that sees a key of the warp (queries
      // before the warp's first key only occur in the first tile, i0 = begin).
      const int c0 = int(max(int64_t(0), warp_first_pos - i0) / 16), c1 = (qn + 15) / 16;
      if (c0 >= c1) continue;

      // s^T (16, 64) = K rows r0.. Q^T, dp^T = V rows r0.. dO^T, chunks c0 .. c1 - 1.
      for (int nt = c0; nt < c1; ++nt)
        TwoProducts(sw + nt * 16, dpw + nt * 16, ks + r0 * ld, qs + nt * 16 * ld, vs + r0 * ld,
                    dos + nt * 16 * ld, ld, nD);
      __syncwarp();

      // p, ds of key row lr (unseen: 0; columns outside the chunks are all unseen).
#pragma unroll 8
      for (int i = 0; i < kBlk / 2; ++i) {
        const int c = 2 * i + half;
        float p = 0.0f, ds = 0.0f;
        if (row_ok && c < qn && i0 + c >= kpos) {
          p = expf(sw[lr * kSld + c] * scale - lse_s[c]);
          ds = p * (dpw[lr * kSld + c] - delta_s[c]);
        }
        ptw[lr * kPld + c] = __float2bfloat16_rn(p);
        dstw[lr * kPld + c] = __float2bfloat16_rn(ds);
      }
      __syncwarp();

      // dV += P^T dO, dK += dS^T Q over the chunks' queries.
      for (int kk = c0; kk < c1; ++kk) {
        FragA ap, ads;
        wmma::load_matrix_sync(ap, ptw + kk * 16, kPld);
        wmma::load_matrix_sync(ads, dstw + kk * 16, kPld);
#pragma unroll
        for (int nd = 0; nd < kN; ++nd) {
          if (nd < nD) {
            FragBRow bm;
            wmma::load_matrix_sync(bm, dos + kk * 16 * ld + nd * 16, ld);
            wmma::mma_sync(dva[nd], ap, bm, dva[nd]);
            wmma::load_matrix_sync(bm, qs + kk * 16 * ld + nd * 16, ld);
            wmma::mma_sync(dka[nd], ads, bm, dka[nd]);
          }
        }
      }
      __syncwarp();  // the scratch is rewritten by the next tile
    }
  }
  if (last < r0) return;  // warp-uniform; no barrier follows
  const int64_t o = (int64_t(b.begin) + r0) * Hkv + g;
  StoreRows<kN>(dk + o * D, Hkv * D, dka, scale, sw, last - r0 + 1, D, lane);
  StoreRows<kN>(dv + o * D, Hkv * D, dva, 1.0f, sw, last - r0 + 1, D, lane);
#endif
}

// dq of one (query block, q head): item blockIdx.x = block index * Hq + q head.
// Warp w owns query rows 16 w .. 16 w + 15 of the block (its dQ (16, D) in fragments); lane pair
// (2 r, 2 r + 1) computes ds of query row r, lane 2 r + half the key columns half + 2 i.
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardQBf16Kernel(float* dq, const bf16* dout, const float* lse, const float* delta,
                                 const bf16* q, const bf16* k, const bf16* v, const Block* blocks,
                                 int64_t Hq, int64_t Hkv, int D, float scale, bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  constexpr int kN = kDmax / 16;
  extern __shared__ __align__(128) unsigned char smem[];
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32, tid = int(threadIdx.x);
  const int nD = D / 16, ld = D + 8;
  const size_t tile = TileBytes(D);
  unsigned char* warp_base = smem + 4 * tile;
  bf16* qs = reinterpret_cast<bf16*>(smem);             // (64, ld): the query block
  bf16* dos = reinterpret_cast<bf16*>(smem + tile);     // (64, ld): its dout
  bf16* ks = reinterpret_cast<bf16*>(smem + 2 * tile);  // (64, ld): a key tile
  bf16* vs = reinterpret_cast<bf16*>(smem + 3 * tile);  // (64, ld): its values
  // (16, kSld) s then (16, kSld) dp of this warp; at the end its (16, D + 4) output stage.
  float* sw = reinterpret_cast<float*>(warp_base + warp * kWarpF32Bytes);
  float* dpw = sw + kRows * kSld;
  // (16, kPld): ds of this warp in bf16.
  bf16* dsw = reinterpret_cast<bf16*>(warp_base + kWarps * kWarpF32Bytes + warp * kWarpBf16Bytes);
  // (64) lse and (64) delta of the query block.
  float* lse_s = reinterpret_cast<float*>(warp_base + kWarps * (kWarpF32Bytes + kWarpBf16Bytes));
  float* delta_s = lse_s + kBlk;

  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hq];
  const int64_t h = item % Hq, g = h / (Hq / Hkv);
  const int r0 = warp * kRows;
  const int last = min(r0 + kRows, b.n) - 1;  // the warp's last valid query row (< r0: none)
  const int lr = lane / 2, half = lane % 2;
  const bool row_ok = r0 + lr < b.n;
  const int64_t qpos = int64_t(b.begin) + r0 + lr;  // the lane's query token
  const int64_t warp_last_pos = int64_t(b.begin) + last;

  LoadTile(qs, q + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, D, vec);
  LoadTile(dos, dout + (int64_t(b.begin) * Hq + h) * D, Hq * D, b.n, D, vec);
  if (tid < kBlk) {
    lse_s[tid] = tid < b.n ? lse[(int64_t(b.begin) + tid) * Hq + h] : 0.0f;
    delta_s[tid] = tid < b.n ? delta[(int64_t(b.begin) + tid) * Hq + h] : 0.0f;
  }
  FragC acc[kN];  // (16, D)
#pragma unroll
  for (int nd = 0; nd < kN; ++nd) wmma::fill_fragment(acc[nd], 0.0f);
  // The lane's row statistics (read after the first barrier of the loop, which every block has:
  // b.n >= 1, so the loop runs at least once).
  float row_lse = 0.0f, row_delta = 0.0f;

  for (int64_t j0 = b.doc_begin; j0 < int64_t(b.begin) + b.n; j0 += kBlk) {
    const int kn = int(min(int64_t(kBlk), int64_t(b.doc_end) - j0));
    __syncthreads();  // the previous tile is no longer read
    LoadTile(ks, k + (j0 * Hkv + g) * D, Hkv * D, kn, D, vec);
    LoadTile(vs, v + (j0 * Hkv + g) * D, Hkv * D, kn, D, vec);
    __syncthreads();
    row_lse = lse_s[r0 + lr];
    row_delta = delta_s[r0 + lr];
    if (last < r0 || j0 > warp_last_pos) continue;  // warp-uniform: no row of it sees this tile
    const int nc = min((kn + 15) / 16, int((warp_last_pos - j0) / 16) + 1);

    // s (16, 16 nc) = Q rows r0.. K^T, dp = dO rows r0.. V^T.
    for (int nt = 0; nt < nc; ++nt)
      TwoProducts(sw + nt * 16, dpw + nt * 16, qs + r0 * ld, ks + nt * 16 * ld, dos + r0 * ld,
                  vs + nt * 16 * ld, ld, nD);
    __syncwarp();

    // ds of query row lr (unseen keys: 0; columns beyond chunk nc are all unseen).
#pragma unroll 8
    for (int i = 0; i < kBlk / 2; ++i) {
      const int c = 2 * i + half;
      float ds = 0.0f;
      if (row_ok && c < kn && j0 + c <= qpos) {
        const float p = expf(sw[lr * kSld + c] * scale - row_lse);
        ds = p * (dpw[lr * kSld + c] - row_delta);
      }
      dsw[lr * kPld + c] = __float2bfloat16_rn(ds);
    }
    __syncwarp();

    // dQ += dS K.
    for (int kk = 0; kk < nc; ++kk) {
      FragA a;
      wmma::load_matrix_sync(a, dsw + kk * 16, kPld);
#pragma unroll
      for (int nd = 0; nd < kN; ++nd) {
        if (nd < nD) {
          FragBRow bk;
          wmma::load_matrix_sync(bk, ks + kk * 16 * ld + nd * 16, ld);
          wmma::mma_sync(acc[nd], a, bk, acc[nd]);
        }
      }
    }
    __syncwarp();  // the scratch is rewritten by the next tile
  }
  if (last < r0) return;  // warp-uniform; no barrier follows
  StoreRows<kN>(dq + ((int64_t(b.begin) + r0) * Hq + h) * D, Hq * D, acc, scale, sw, last - r0 + 1,
                D, lane);
#endif
}

// Checks the arguments (no CUDA call) and makes the block list, twice: by_q ordered by
// decreasing number of key tiles (forward, dQ), by_kv by decreasing number of query tiles (dK,
// dV), so that the costly items start first. Both are functions of cu_seqlens alone. (The same
// plan as attention.cu's, with the bf16 kernels' head-dim rule.)
// The arguments the shared planner leaves to each kernel family: the head dims it supports.
Status PlanAttention(const char* op, const int32_t* cu, int64_t num_docs, int64_t T, int64_t Hq,
                     int64_t Hkv, int64_t D, std::vector<Block>* by_q, std::vector<Block>* by_kv) {
  XT_RETURN_IF_ERROR(detail::PlanBlocks(op, cu, num_docs, T, Hq, Hkv, D, by_q, by_kv));
  if (!AttentionBf16Supports(D))
    return Status::Error(std::string(op) + ": head dim D = " + std::to_string(D) +
                         " is not supported by the bf16 kernels (a multiple of 16 in [16, " +
                         std::to_string(kMaxD) + "])");
  return Status::OK();
}

// Whether all pointers are 16-byte aligned (row strides, D elements of bf16 with D % 16 == 0,
// are multiples of 32 bytes).
bool Aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// The bf16 copies of the inputs the kernels read, in `scratch`: each of `parts` (an fp32 device
// array and its size) rounded to nearest even, in order (each copy 256-byte aligned).
Status Bf16Copies(detail::Scratch& scratch,
                  std::initializer_list<std::pair<const float*, int64_t>> parts,
                  std::vector<const bf16*>* copies, cudaStream_t st, const char* what) {
  for (const auto& [src, n] : parts) {
    bf16* copy = nullptr;
    XT_RETURN_IF_ERROR(scratch.Alloc(&copy, n, what));
    XT_RETURN_IF_ERROR(ToBf16(copy, src, n, st));
    copies->push_back(copy);
  }
  return Status::OK();
}

template <int kDmax>
Status LaunchForward(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                     const Block* blocks, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D,
                     float scale, cudaStream_t st) {
  const size_t bytes = ForwardSmemBytes(int(D));
  XT_RETURN_IF_ERROR(
      PrepareSmem(AttentionForwardBf16Kernel<kDmax>, bytes, "attention_forward_bf16"));
  AttentionForwardBf16Kernel<kDmax><<<unsigned(nb * Hq), kThreads, bytes, st>>>(
      out, lse, q, k, v, blocks, Hq, Hkv, int(D), scale, Aligned16({q, k, v}));
  return Check(cudaGetLastError(), "attention_forward_bf16 launch");
}

template <int kDmax>
Status LaunchBackward(float* dq, float* dk, float* dv, const bf16* dout, const float* lse,
                      const float* delta, const bf16* q, const bf16* k, const bf16* v,
                      const Block* by_q, const Block* by_kv, int64_t nb, int64_t Hq, int64_t Hkv,
                      int64_t D, float scale, cudaStream_t st) {
  const size_t kv_bytes = BackwardKvSmemBytes(int(D)), q_bytes = BackwardQSmemBytes(int(D));
  const bool vec = Aligned16({q, k, v, dout});
  XT_RETURN_IF_ERROR(PrepareSmem(AttentionBackwardKvBf16Kernel<kDmax>, kv_bytes,
                                 "attention_backward_bf16 (dk, dv)"));
  XT_RETURN_IF_ERROR(
      PrepareSmem(AttentionBackwardQBf16Kernel<kDmax>, q_bytes, "attention_backward_bf16 (dq)"));
  AttentionBackwardKvBf16Kernel<kDmax><<<unsigned(nb * Hkv), kThreads, kv_bytes, st>>>(
      dk, dv, dout, lse, delta, q, k, v, by_kv, Hq, Hkv, int(D), scale, vec);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "attention_backward_bf16 (dk, dv) launch"));
  AttentionBackwardQBf16Kernel<kDmax><<<unsigned(nb * Hq), kThreads, q_bytes, st>>>(
      dq, dout, lse, delta, q, k, v, by_q, Hq, Hkv, int(D), scale, vec);
  return Check(cudaGetLastError(), "attention_backward_bf16 (dq) launch");
}

}  // namespace

bool AttentionBf16Supports(int64_t D) { return D >= 16 && D <= kMaxD && D % 16 == 0; }

Status AttentionBf16Device() {
  int dev = 0, major = 0, minor = 0;
  XT_RETURN_IF_ERROR(Check(cudaGetDevice(&dev), "attention_bf16 device"));
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev),
                           "attention_bf16 device"));
  XT_RETURN_IF_ERROR(Check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev),
                           "attention_bf16 device"));
  if (major < 8)
    return Status::Error(
        "attention_bf16: needs bf16 tensor cores (compute capability 8.0 or "
        "newer); device " +
        std::to_string(dev) + " is " + std::to_string(major) + "." + std::to_string(minor));
  return Status::OK();
}

Status AttentionForwardBf16(float* out, float* lse, const float* q, const float* k, const float* v,
                            const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                            int64_t Hkv, int64_t D, float scale, void* stream) {
  std::vector<Block> by_q, by_kv;
  XT_RETURN_IF_ERROR(
      PlanAttention("attention_forward_bf16", cu_seqlens, num_docs, T, Hq, Hkv, D, &by_q, &by_kv));
  if (T == 0) return Status::OK();
  XT_RETURN_IF_ERROR(AttentionBf16Device());
  const cudaStream_t st = cudaStream_t(stream);
  const int64_t nb = int64_t(by_q.size());
  detail::Scratch scratch(st);
  const Block* blocks = nullptr;
  std::vector<const bf16*> in;  // q, k, v
  Status s = UploadBlocks(scratch, by_q, by_kv, &blocks, st, "attention_forward_bf16 blocks");
  if (s.ok())
    s = Bf16Copies(scratch, {{q, T * Hq * D}, {k, T * Hkv * D}, {v, T * Hkv * D}}, &in, st,
                   "attention_forward_bf16 inputs");
  if (s.ok()) {
    if (D <= 64)
      s = LaunchForward<64>(out, lse, in[0], in[1], in[2], blocks, nb, Hq, Hkv, D, scale, st);
    else
      s = LaunchForward<128>(out, lse, in[0], in[1], in[2], blocks, nb, Hq, Hkv, D, scale, st);
  }
  const Status freed = scratch.Release("attention_forward_bf16 scratch free");
  return s.ok() ? freed : s;
}

Status AttentionBackwardBf16(float* dq, float* dk, float* dv, const float* dout, const float* out,
                             const float* lse, const float* q, const float* k, const float* v,
                             const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D, float scale, void* stream) {
  std::vector<Block> by_q, by_kv;
  XT_RETURN_IF_ERROR(
      PlanAttention("attention_backward_bf16", cu_seqlens, num_docs, T, Hq, Hkv, D, &by_q, &by_kv));
  if (T == 0) return Status::OK();
  XT_RETURN_IF_ERROR(AttentionBf16Device());
  const cudaStream_t st = cudaStream_t(stream);
  const int64_t nb = int64_t(by_q.size());
  detail::Scratch scratch(st);
  const Block* blocks = nullptr;
  float* delta = nullptr;  // (T, Hq)
  Status s = UploadBlocks(scratch, by_q, by_kv, &blocks, st, "attention_backward_bf16 scratch");
  if (s.ok()) s = scratch.Alloc(&delta, T * Hq, "attention_backward_bf16 scratch");
  if (s.ok()) {
    AttentionDeltaBf16Kernel<<<detail::BlocksFor(T * Hq * 32), detail::kThreads, 0, st>>>(
        delta, dout, out, T * Hq, int(D));
    s = Check(cudaGetLastError(), "attention_backward_bf16 (delta) launch");
    std::vector<const bf16*> in;  // dout, q, k, v
    if (s.ok())
      s = Bf16Copies(scratch,
                     {{dout, T * Hq * D}, {q, T * Hq * D}, {k, T * Hkv * D}, {v, T * Hkv * D}}, &in,
                     st, "attention_backward_bf16 inputs");
    if (s.ok()) {
      if (D <= 64)
        s = LaunchBackward<64>(dq, dk, dv, in[0], lse, delta, in[1], in[2], in[3], blocks,
                               blocks + nb, nb, Hq, Hkv, D, scale, st);
      else
        s = LaunchBackward<128>(dq, dk, dv, in[0], lse, delta, in[1], in[2], in[3], blocks,
                                blocks + nb, nb, Hq, Hkv, D, scale, st);
    }
  }
  const Status freed = scratch.Release("attention_backward_bf16 scratch free");
  return s.ok() ? freed : s;
}

}  // namespace xt::cuda
