// The pieces the bf16 attention kernels share (internal to attention_bf16.cu, the forward, and
// attention_bf16_backward.cu): tile sizes, shared-memory layout, WMMA fragment types, the tile
// loader, the accumulator row map, the row store, the planner's head-dim rule, the inputs' bf16
// copies. The scheme as a whole:
//
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
// The inputs are rounded to bf16 once per call (Bf16Copies), or come in bf16 (the FromBf16
// functions; copied only where they are not 16-byte aligned, AlignedBf16), so the streamed tiles
// move half the bytes of fp32 and the loops convert nothing.
// The mma family (attention_mma_tiles.h) does the first speed ideas: mma.sync with known
// fragment layouts (softmax in registers, no shared round trip of S) and cp.async
// double-buffering. Not done in either: wgmma / TMA, a persistent grid ordered by cost.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/attention_blocks.h"
#include "xtuner/cuda/device.h"
#include "xtuner/cuda/gemm_cuda.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda::bf16attn {

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
inline size_t ForwardSmemBytes(int D) {
  return 3 * TileBytes(D) + kWarps * (kWarpF32Bytes + kWarpBf16Bytes + kWarpRowBytes);
}
// dK/dV: K, V, Q, dO tiles | fp32 scratch x 4 | P^T, dS^T x 4 | lse, delta.
inline size_t BackwardKvSmemBytes(int D) {
  return 4 * TileBytes(D) + kWarps * (kWarpF32Bytes + 2 * kWarpBf16Bytes) + kRowStatBytes;
}
// dQ: Q, dO, K, V tiles | fp32 scratch x 4 | dS x 4 | lse, delta.
inline size_t BackwardQSmemBytes(int D) {
  return 4 * TileBytes(D) + kWarps * (kWarpF32Bytes + kWarpBf16Bytes) + kRowStatBytes;
}

// dst (kBlk, D + 8) bf16 = the first `valid` rows of src (row stride `stride` elements, D each:
// q, k, v, dout in bf16, rounded by the launcher once per call or given so, so each tile moves
// half the bytes of fp32 and no conversion sits in the loops), the other rows zero (pad columns
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

// detail::PlanBlocks (the blocks, ordered by cost, and the argument checks) with the bf16
// kernels' head-dim rule.
inline Status PlanAttention(const char* op, const int32_t* cu, int64_t num_docs, int64_t T,
                            int64_t Hq, int64_t Hkv, int64_t D, std::vector<Block>* by_q,
                            std::vector<Block>* by_kv) {
  XT_RETURN_IF_ERROR(detail::PlanBlocks(op, cu, num_docs, T, Hq, Hkv, D, by_q, by_kv));
  if (!AttentionBf16Supports(D))
    return Status::Error(std::string(op) + ": head dim D = " + std::to_string(D) +
                         " is not supported by the bf16 kernels (a multiple of 16 in [16, " +
                         std::to_string(kMaxD) + "])");
  return Status::OK();
}

// Whether all pointers are 16-byte aligned (row strides, D elements of bf16 with D % 16 == 0,
// are multiples of 32 bytes).
inline bool Aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

// bf16 bits given as uint16_t (the public overloads' inputs already in bf16), as the kernels read
// them.
inline const bf16* AsBf16(const uint16_t* p) { return reinterpret_cast<const bf16*>(p); }

// *p (n bf16 elements, given by the caller) as the kernels read it: itself where 16-byte
// aligned, else a copy of it in `scratch` (the mma kernels' asynchronous tile copies need the
// alignment; the same bits either way).
inline Status AlignedBf16(detail::Scratch& scratch, const bf16** p, int64_t n, cudaStream_t st,
                          const char* what) {
  if (Aligned16({*p})) return Status::OK();
  bf16* copy = nullptr;
  XT_RETURN_IF_ERROR(scratch.Alloc(&copy, n, what));
  XT_RETURN_IF_ERROR(Check(
      cudaMemcpyAsync(copy, *p, size_t(n) * sizeof(bf16), cudaMemcpyDeviceToDevice, st), what));
  *p = copy;
  return Status::OK();
}

// The bf16 copies of the inputs the kernels read, in `scratch`: each of `parts` (an fp32 device
// array and its size) rounded to nearest even, in order (each copy 256-byte aligned).
inline Status Bf16Copies(detail::Scratch& scratch,
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

}  // namespace xt::cuda::bf16attn
