// The bf16 attention's backward (attention_bf16.h): delta, then dK/dV per (64-key block, kv
// head) and dQ per (64-query block, q head), no atomics; the scheme, the shared memory layout and
// the pieces shared with the forward are in attention_bf16_tiles.h.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "xtuner/cuda/attention_bf16.h"
#include "xtuner/cuda/attention_bf16_tiles.h"
#include "xtuner/cuda/attention_mma.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda {
namespace {

using namespace bf16attn;  // NOLINT: this file is one of its two users

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

// delta (rows) = <bf16(dout row), out row> (rows = T * Hq, D each) in fp32: one warp per row, the
// lanes' strided partial sums added by a fixed butterfly. dout is rounded as the dp products see
// it, so that delta = sum_j p_j dp_j holds up to v's rounding (and exactly, up to fp32 sums, for
// a one-token document after the bf16 forward, whose out is bf16(v)): ds = p (dp - delta) is
// then not dominated by dout's rounding where dp and delta nearly cancel.
__device__ __forceinline__ float Widen(float x) { return x; }
__device__ __forceinline__ float Widen(bf16 x) { return __bfloat162float(x); }

// Out: float, or bf16 (the forward's output already rounded, as its next product rounds it).
template <typename Out>
__global__ void AttentionDeltaBf16Kernel(float* delta, const float* dout, const Out* out,
                                         int64_t rows, int D) {
  const int lane = threadIdx.x & 31;
  const int64_t warps = detail::GridThreads() / 32;
  for (int64_t r = detail::GlobalThread() / 32; r < rows; r += warps) {  // uniform in the warp
    float s = 0.0f;
    for (int d = lane; d < D; d += 32)
      s = fmaf(__bfloat162float(__float2bfloat16_rn(dout[r * D + d])), Widen(out[r * D + d]), s);
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
  XT_DYNAMIC_SHARED(unsigned char, smem);
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
  XT_DYNAMIC_SHARED(unsigned char, smem);
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
  XT_LAUNCH(AttentionBackwardKvBf16Kernel<kDmax>, unsigned(nb * Hkv), kThreads, kv_bytes, st)
  (dk, dv, dout, lse, delta, q, k, v, by_kv, Hq, Hkv, int(D), scale, vec);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "attention_backward_bf16 (dk, dv) launch"));
  XT_LAUNCH(AttentionBackwardQBf16Kernel<kDmax>, unsigned(nb * Hq), kThreads, q_bytes, st)
  (dq, dout, lse, delta, q, k, v, by_q, Hq, Hkv, int(D), scale, vec);
  return Check(cudaGetLastError(), "attention_backward_bf16 (dq) launch");
}

}  // namespace

namespace {

// The public backwards' one body: out given in fp32 (out32) or bf16 (out16), q, k, v given in
// bf16 (in16) or rounded here from fp32 (in32) into scratch copies, dout rounded here.
template <typename Out>
Status Backward(float* dq, float* dk, float* dv, const float* dout, const Out* out,
                const float* lse, std::array<const float*, 3> in32, std::array<const bf16*, 3> in16,
                const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq, int64_t Hkv,
                int64_t D, float scale, void* stream, AttentionBf16Kernels kernels) {
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
    XT_LAUNCH(AttentionDeltaBf16Kernel<Out>, detail::BlocksFor(T * Hq * 32), detail::kThreads, 0,
              st)
    (delta, dout, out, T * Hq, int(D));
    s = Check(cudaGetLastError(), "attention_backward_bf16 (delta) launch");
    std::vector<const bf16*> in;  // dout, q, k, v: dout always copied, q, k, v unless given
    const char* what = "attention_backward_bf16 inputs";
    if (s.ok() && in32[0])
      s = Bf16Copies(scratch,
                     {{dout, T * Hq * D},
                      {in32[0], T * Hq * D},
                      {in32[1], T * Hkv * D},
                      {in32[2], T * Hkv * D}},
                     &in, st, what);
    if (s.ok() && !in32[0]) {
      s = Bf16Copies(scratch, {{dout, T * Hq * D}}, &in, st, what);
      in.insert(in.end(), in16.begin(), in16.end());
      for (int i = 1; i < 4 && s.ok(); ++i)
        s = AlignedBf16(scratch, &in[i], T * (i == 1 ? Hq : Hkv) * D, st, what);
    }
    if (s.ok() && kernels == AttentionBf16Kernels::kMma) {
      s = detail::LaunchBackwardMma(dq, dk, dv, in[0], lse, delta, in[1], in[2], in[3], blocks,
                                    blocks + nb, nb, Hq, Hkv, D, scale, st);
    } else if (s.ok()) {
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

}  // namespace

Status AttentionBackwardBf16(float* dq, float* dk, float* dv, const float* dout, const float* out,
                             const float* lse, const float* q, const float* k, const float* v,
                             const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                             int64_t Hkv, int64_t D, float scale, void* stream,
                             AttentionBf16Kernels kernels) {
  return Backward(dq, dk, dv, dout, out, lse, {q, k, v}, {}, cu_seqlens, num_docs, T, Hq, Hkv, D,
                  scale, stream, kernels);
}

Status AttentionBackwardFromBf16(float* dq, float* dk, float* dv, const float* dout,
                                 const uint16_t* out16, const float* lse, const uint16_t* q16,
                                 const uint16_t* k16, const uint16_t* v16,
                                 const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                                 int64_t Hkv, int64_t D, float scale, void* stream,
                                 AttentionBf16Kernels kernels) {
  return Backward(dq, dk, dv, dout, AsBf16(out16), lse, {}, {AsBf16(q16), AsBf16(k16), AsBf16(v16)},
                  cu_seqlens, num_docs, T, Hq, Hkv, D, scale, stream, kernels);
}

}  // namespace xt::cuda
