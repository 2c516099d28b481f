// The bf16 attention's forward (attention_bf16.h): one CUDA block of 4 warps per (64-query block,
// q head), K and V streamed in 64-key tiles, online softmax in fp32; the scheme, the shared
// memory layout and the pieces shared with the backward are in attention_bf16_tiles.h.
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

// Item blockIdx.x = block index * Hq + q head (blocks ordered by decreasing cost).
// Warp w owns query rows 16 w .. 16 w + 15 of the block; lane pair (2 r, 2 r + 1) owns softmax
// row r of the warp, lane 2 r + half its columns half + 2 i (i < 32), and both hold its m and l.
template <int kDmax>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardBf16Kernel(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                               const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale,
                               bool vec) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // never launched there: the host refuses devices without bf16 tensor cores
#else
  constexpr int kN = kDmax / 16;
  XT_DYNAMIC_SHARED(unsigned char, smem);
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

template <int kDmax>
Status LaunchForward(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                     const Block* blocks, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D,
                     float scale, cudaStream_t st) {
  const size_t bytes = ForwardSmemBytes(int(D));
  XT_RETURN_IF_ERROR(
      PrepareSmem(AttentionForwardBf16Kernel<kDmax>, bytes, "attention_forward_bf16"));
  XT_LAUNCH(AttentionForwardBf16Kernel<kDmax>, unsigned(nb * Hq), kThreads, bytes, st)
  (out, lse, q, k, v, blocks, Hq, Hkv, int(D), scale, Aligned16({q, k, v}));
  return Check(cudaGetLastError(), "attention_forward_bf16 launch");
}

}  // namespace

const char* AttentionBf16KernelsName(AttentionBf16Kernels kernels) {
  return kernels == AttentionBf16Kernels::kMma ? "mma" : "wmma";
}

bool ParseAttentionBf16Kernels(const std::string& name, AttentionBf16Kernels* kernels) {
  for (AttentionBf16Kernels k : {AttentionBf16Kernels::kWmma, AttentionBf16Kernels::kMma})
    if (name == AttentionBf16KernelsName(k)) {
      *kernels = k;
      return true;
    }
  return false;
}

bool AttentionBf16Supports(int64_t D) { return D >= 16 && D <= kMaxD && D % 16 == 0; }

Status AttentionBf16Device() { return detail::Bf16TensorCores("attention_bf16"); }

namespace {

// The public forwards' one body: q, k, v given in bf16 (in16), or rounded here from fp32 (in32)
// into scratch copies.
Status Forward(float* out, float* lse, std::array<const float*, 3> in32,
               std::array<const bf16*, 3> in16, const int32_t* cu_seqlens, int64_t num_docs,
               int64_t T, int64_t Hq, int64_t Hkv, int64_t D, float scale, void* stream,
               AttentionBf16Kernels kernels) {
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
  const char* what = "attention_forward_bf16 inputs";
  Status s = UploadBlocks(scratch, by_q, by_kv, &blocks, st, "attention_forward_bf16 blocks");
  if (s.ok() && in32[0]) {
    s = Bf16Copies(scratch, {{in32[0], T * Hq * D}, {in32[1], T * Hkv * D}, {in32[2], T * Hkv * D}},
                   &in, st, what);
  } else if (s.ok()) {
    in.assign(in16.begin(), in16.end());
    for (int i = 0; i < 3 && s.ok(); ++i)
      s = AlignedBf16(scratch, &in[i], T * (i == 0 ? Hq : Hkv) * D, st, what);
  }
  if (s.ok() && kernels == AttentionBf16Kernels::kMma) {
    s = detail::LaunchForwardMma(out, lse, in[0], in[1], in[2], blocks, nb, Hq, Hkv, D, scale, st);
  } else if (s.ok()) {
    if (D <= 64)
      s = LaunchForward<64>(out, lse, in[0], in[1], in[2], blocks, nb, Hq, Hkv, D, scale, st);
    else
      s = LaunchForward<128>(out, lse, in[0], in[1], in[2], blocks, nb, Hq, Hkv, D, scale, st);
  }
  const Status freed = scratch.Release("attention_forward_bf16 scratch free");
  return s.ok() ? freed : s;
}

}  // namespace

Status AttentionForwardBf16(float* out, float* lse, const float* q, const float* k, const float* v,
                            const int32_t* cu_seqlens, int64_t num_docs, int64_t T, int64_t Hq,
                            int64_t Hkv, int64_t D, float scale, void* stream,
                            AttentionBf16Kernels kernels) {
  return Forward(out, lse, {q, k, v}, {}, cu_seqlens, num_docs, T, Hq, Hkv, D, scale, stream,
                 kernels);
}

Status AttentionForwardFromBf16(float* out, float* lse, const uint16_t* q16, const uint16_t* k16,
                                const uint16_t* v16, const int32_t* cu_seqlens, int64_t num_docs,
                                int64_t T, int64_t Hq, int64_t Hkv, int64_t D, float scale,
                                void* stream, AttentionBf16Kernels kernels) {
  return Forward(out, lse, {}, {AsBf16(q16), AsBf16(k16), AsBf16(v16)}, cu_seqlens, num_docs, T, Hq,
                 Hkv, D, scale, stream, kernels);
}

}  // namespace xt::cuda
