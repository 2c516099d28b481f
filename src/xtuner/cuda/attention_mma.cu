// The bf16 attention's mma forward (attention_mma.h): one CUDA block of 4 warps per (64-query
// block, q head); K and V streamed in 64-key tiles, double-buffered; scores, softmax and the
// output accumulator in registers (attention_mma_tiles.h).
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "xtuner/cuda/attention_mma.h"
#include "xtuner/cuda/attention_mma_tiles.h"
#include "xtuner/cuda/launch.h"

namespace xt::cuda {
namespace {

using namespace mmaattn;  // NOLINT: this file is one of its two users

// Item blockIdx.x = block index * Hq + q head (blocks ordered by decreasing cost). Warp w owns
// query rows 16 w .. 16 w + 15 of the block; this thread rows g and g + 8 of them.
// Shared memory: the query tile, then two (key, value) tile pairs.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    AttentionForwardMmaKernel(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                              const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale) {
  XT_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, ld = D + 8;
  const size_t tile = TileBytes(D);
  bf16* qs = reinterpret_cast<bf16*>(smem);
  auto ks = [&](int buf) { return reinterpret_cast<bf16*>(smem + (1 + 2 * buf) * tile); };
  auto vs = [&](int buf) { return reinterpret_cast<bf16*>(smem + (2 + 2 * buf) * tile); };

  const QueryItem qi(blocks, Hq, Hkv, warp, g);
  const int r0 = qi.r0;
  const float scale2 = scale * kLog2e;  // scores in base-2 units
  LoadTileAsync(qs, q + (int64_t(qi.b.begin) * Hq + qi.h) * D, Hq * D, qi.b.n, D);
  qi.LoadKeys(ks(0), vs(0), k, v, Hkv, D, 0);
  mma::CpAsyncCommit();

  float o[kD / 8][4];  // (16, D): the warp's unnormalised output
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) o[j][i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};  // rows g, g + 8 (base 2)

  for (int it = 0; it < qi.ntiles; ++it) {
    if (it + 1 < qi.ntiles) qi.LoadKeys(ks((it + 1) % 2), vs((it + 1) % 2), k, v, Hkv, D, it + 1);
    mma::CpAsyncCommit();   // (empty after the last tile: the group count stays regular)
    mma::CpAsyncWait<1>();  // everything but the next tile's copies has landed
    __syncthreads();
    if (qi.WarpSees(it)) {
      const int nc = qi.Chunks(it);
      float s[kCols8][4];
      Scores<kD>(s, qs + r0 * ld, ks(it % 2), ld, D, nc, lane);

      // Masked, scaled scores (unseen: -inf) and the rows' new maxima; interior tiles skip the
      // mask.
      float mx[2] = {m[0], m[1]};
      auto scale_and_max = [&](auto seen) {
#pragma unroll
        for (int j = 0; j < kCols8; ++j)
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            s[j][i] = seen(j, i) ? s[j][i] * scale2 : -INFINITY;
            mx[i / 2] = fmaxf(mx[i / 2], s[j][i]);
          }
      };
      if (qi.Unmasked(it))
        scale_and_max([](int, int) { return true; });
      else
        scale_and_max([&](int j, int i) { return qi.Seen(it, j, i, t); });
      float base[2], corr[2], sum[2] = {0.0f, 0.0f};
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        mx[r] = QuadMax(mx[r]);
        base[r] = mx[r] == -INFINITY ? 0.0f : mx[r];  // a row with no seen key yet: p = 0
        corr[r] = exp2f(m[r] - base[r]);              // 0 while m = -inf
        m[r] = mx[r];
      }
#pragma unroll
      for (int j = 0; j < kCols8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          s[j][i] = exp2f(s[j][i] - base[i / 2]);
          sum[i / 2] += s[j][i];
        }
#pragma unroll
      for (int r = 0; r < 2; ++r) l[r] = l[r] * corr[r] + QuadSum(sum[r]);
#pragma unroll
      for (int j = 0; j < kD / 8; ++j)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[j][i] *= corr[i / 2];

      // O += P V, P = the weights rounded to bf16, as A fragments straight from s.
      uint32_t p[kBlk / 16][4];
      PackRows(p, s);
      Accumulate<kD>(o, p, vs(it % 2), ld, D, nc, lane);
    }
    __syncthreads();  // the next iteration's copies overwrite this tile's buffers
  }

  if (qi.last < r0) return;
  // out = O / l (l > 0 for every valid row; the others are not written).
  const float inv0 = l[0] > 0.0f ? 1.0f / l[0] : 0.0f, inv1 = l[1] > 0.0f ? 1.0f / l[1] : 0.0f;
  StoreRows<kD>(out + ((int64_t(qi.b.begin) + r0) * Hq + qi.h) * D, Hq * D, o, inv0, inv1,
                qi.last - r0 + 1, D, lane);
  for (int r = 0; r < 2; ++r)
    if (t == 0 && qi.ok[r]) lse[qi.pos[r] * Hq + qi.h] = m[r] * kLn2 + logf(l[r]);
}

template <int kD>
Status Launch(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
              const Block* blocks, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D, float scale,
              cudaStream_t st) {
  const size_t bytes = 5 * TileBytes(int(D));
  XT_RETURN_IF_ERROR(
      detail::PrepareSmem(AttentionForwardMmaKernel<kD>, bytes, "attention_forward_bf16 (mma)"));
  XT_LAUNCH(AttentionForwardMmaKernel<kD>, unsigned(nb * Hq), kThreads, bytes, st)
  (out, lse, q, k, v, blocks, Hq, Hkv, int(D), scale);
  return Check(cudaGetLastError(), "attention_forward_bf16 (mma) launch");
}

}  // namespace

namespace detail {

Status LaunchForwardMma(float* out, float* lse, const bf16* q, const bf16* k, const bf16* v,
                        const Block* by_q, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D,
                        float scale, cudaStream_t st) {
  if (D <= 64) return Launch<64>(out, lse, q, k, v, by_q, nb, Hq, Hkv, D, scale, st);
  return Launch<128>(out, lse, q, k, v, by_q, nb, Hq, Hkv, D, scale, st);
}

}  // namespace detail
}  // namespace xt::cuda
