// The bf16 attention's mma backward (attention_mma.h), after the launcher's delta: dK/dV per
// (64-key block, kv head) and dQ per (64-query block, q head), no atomics; the streamed tiles
// double-buffered, scores and weights in registers (attention_mma_tiles.h).
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

// p = exp(s scale - lse) and ds = p (dp - delta) of a warp's (16, 64) tile, in place (s becomes p,
// dp becomes ds), 0 where unseen (selected, never multiplied). seen(j, i) says whether element
// i of n8 tile j is seen; lse2 (base 2) and delta per element from `stat`.
template <class Seen, class Stat>
__device__ inline void Weights(float (&s)[kCols8][4], float (&dp)[kCols8][4], float scale2,
                               Seen seen, Stat stat) {
#pragma unroll
  for (int j = 0; j < kCols8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      float lse2, delta;
      stat(j, i, &lse2, &delta);
      const bool ok = seen(j, i);
      const float p = ok ? exp2f(s[j][i] * scale2 - lse2) : 0.0f;
      dp[j][i] = ok ? p * (dp[j][i] - delta) : 0.0f;
      s[j][i] = p;
    }
}

// Item blockIdx.x = block index * Hkv + kv head (by_kv: blocks ordered by decreasing cost).
// Warp w owns keys 16 w .. 16 w + 15 of the block; this thread keys g and g + 8 of them. The
// group's q heads in order, and for each the 64-query tiles from the key block to the
// document's end: S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q.
// Shared memory: K, V tiles, two (Q, dO) tile pairs, two (lse, delta) rows of 64.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardKvMmaKernel(float* dk, float* dv, const bf16* dout, const float* lse,
                                 const float* delta, const bf16* q, const bf16* k, const bf16* v,
                                 const Block* blocks, int64_t Hq, int64_t Hkv, int D, float scale) {
  XT_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, ld = D + 8;
  const size_t tile = TileBytes(D);
  bf16* ks = reinterpret_cast<bf16*>(smem);
  bf16* vs = reinterpret_cast<bf16*>(smem + tile);
  auto qs = [&](int buf) { return reinterpret_cast<bf16*>(smem + (2 + 2 * buf) * tile); };
  auto dos = [&](int buf) { return reinterpret_cast<bf16*>(smem + (3 + 2 * buf) * tile); };
  // (lse in base 2, delta) of a query tile's 64 rows.
  auto stats = [&](int buf) { return reinterpret_cast<float*>(smem + 6 * tile) + buf * 2 * kBlk; };

  const int64_t item = blockIdx.x;
  const Block b = blocks[item / Hkv];
  const int64_t kvh = item % Hkv, group = Hq / Hkv;
  const int r0 = warp * kRows;
  const int last = min(r0 + kRows, b.n) - 1;
  const int64_t kpos0 = int64_t(b.begin) + r0 + g, kpos1 = kpos0 + 8;  // this thread's keys
  const bool ok0 = r0 + g < b.n, ok1 = r0 + g + 8 < b.n;
  const int64_t warp_first_key = int64_t(b.begin) + r0;
  const float scale2 = scale * kLog2e;

  const int ntq = int((int64_t(b.doc_end) - b.begin + kBlk - 1) / kBlk);  // query tiles a head
  const int nit = int(group) * ntq;
  auto tile_of = [&](int it, int64_t* h, int64_t* i0, int* qn) {
    *h = kvh * group + it / ntq;
    *i0 = int64_t(b.begin) + int64_t(it % ntq) * kBlk;
    *qn = int(min(int64_t(kBlk), int64_t(b.doc_end) - *i0));
  };
  // Query tile it: Q and dO by cp.async; its row r's (lse in base 2, delta) into *row_stats
  // (threads r < 64), for the caller to store into stats(it % 2) before a barrier.
  const int r = int(threadIdx.x);
  auto load = [&](int it, float* row_stats) {
    int64_t h, i0;
    int qn;
    tile_of(it, &h, &i0, &qn);
    LoadTileAsync(qs(it % 2), q + (i0 * Hq + h) * D, Hq * D, qn, D);
    LoadTileAsync(dos(it % 2), dout + (i0 * Hq + h) * D, Hq * D, qn, D);
    const bool ok = r < kBlk && r < qn;
    row_stats[0] = ok ? lse[(i0 + r) * Hq + h] * kLog2e : 0.0f;
    row_stats[1] = ok ? delta[(i0 + r) * Hq + h] : 0.0f;
  };
  auto store_stats = [&](int it, const float* row_stats) {
    if (r < kBlk) stats(it % 2)[r] = row_stats[0], stats(it % 2)[kBlk + r] = row_stats[1];
  };
  LoadTileAsync(ks, k + (int64_t(b.begin) * Hkv + kvh) * D, Hkv * D, b.n, D);
  LoadTileAsync(vs, v + (int64_t(b.begin) * Hkv + kvh) * D, Hkv * D, b.n, D);
  float next_stats[2];
  load(0, next_stats);
  store_stats(0, next_stats);  // visible after the loop's first barrier
  mma::CpAsyncCommit();

  float dka[kD / 8][4], dva[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) dka[j][i] = dva[j][i] = 0.0f;

  for (int it = 0; it < nit; ++it) {
    // The next tile's statistics are read from global memory now and stored at the end of this
    // one: their latency hides behind this tile's products.
    if (it + 1 < nit) load(it + 1, next_stats);
    mma::CpAsyncCommit();
    mma::CpAsyncWait<1>();
    __syncthreads();
    int64_t h, i0;
    int qn;
    tile_of(it, &h, &i0, &qn);
    if (last >= r0 && i0 + qn - 1 >= warp_first_key) {  // warp-uniform: some key is seen
      const int nc = (qn + 15) / 16;
      const bf16* qt = qs(it % 2);
      const bf16* dot = dos(it % 2);
      const float* st = stats(it % 2);
      float s[kCols8][4], dp[kCols8][4];
      Scores<kD>(s, ks + r0 * ld, qt, ld, D, nc, lane);    // S^T (keys, queries)
      Scores<kD>(dp, vs + r0 * ld, dot, ld, D, nc, lane);  // dP^T
      auto stat = [&](int j, int i, float* lse2, float* dl) {
        const int c = 8 * j + 2 * t + i % 2;
        *lse2 = st[c];
        *dl = st[kBlk + c];
      };
      // Every key row of the warp in the block and seen by every query of the tile: no mask.
      if (last - r0 == kRows - 1 && qn == kBlk && i0 >= warp_first_key + kRows - 1)
        Weights(
            s, dp, scale2, [](int, int) { return true; }, stat);
      else
        Weights(
            s, dp, scale2,
            [&](int j, int i) {
              const int c = 8 * j + 2 * t + i % 2;
              return (i < 2 ? ok0 : ok1) && c < qn && i0 + c >= (i < 2 ? kpos0 : kpos1);
            },
            stat);
      uint32_t w[kBlk / 16][4];
      PackRows(w, s);  // P^T
      Accumulate<kD>(dva, w, dot, ld, D, nc, lane);
      PackRows(w, dp);  // dS^T
      Accumulate<kD>(dka, w, qt, ld, D, nc, lane);
    }
    if (it + 1 < nit) store_stats(it + 1, next_stats);  // the buffer tile it - 1 used
    __syncthreads();  // the next iteration's copies overwrite this tile's buffers
  }
  if (last < r0) return;
  const int64_t at = (int64_t(b.begin) + r0) * Hkv + kvh;
  StoreRows<kD>(dk + at * D, Hkv * D, dka, scale, scale, last - r0 + 1, D, lane);
  StoreRows<kD>(dv + at * D, Hkv * D, dva, 1.0f, 1.0f, last - r0 + 1, D, lane);
}

// Item blockIdx.x = block index * Hq + q head (by_q). Warp w owns queries 16 w .. 16 w + 15;
// K and V streamed as in the forward: S = Q K^T, dP = dO V^T, dQ += dS K.
// Shared memory: Q, dO tiles, two (K, V) tile pairs.
template <int kD>
__global__ void __launch_bounds__(kThreads)
    AttentionBackwardQMmaKernel(float* dq, const bf16* dout, const float* lse, const float* delta,
                                const bf16* q, const bf16* k, const bf16* v, const Block* blocks,
                                int64_t Hq, int64_t Hkv, int D, float scale) {
  XT_DYNAMIC_SHARED(unsigned char, smem);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4, ld = D + 8;
  const size_t tile = TileBytes(D);
  bf16* qs = reinterpret_cast<bf16*>(smem);
  bf16* dos = reinterpret_cast<bf16*>(smem + tile);
  auto ks = [&](int buf) { return reinterpret_cast<bf16*>(smem + (2 + 2 * buf) * tile); };
  auto vs = [&](int buf) { return reinterpret_cast<bf16*>(smem + (3 + 2 * buf) * tile); };

  const QueryItem qi(blocks, Hq, Hkv, warp, g);
  const int r0 = qi.r0;
  const float scale2 = scale * kLog2e;
  float lse2[2], dl[2];  // this thread's rows' lse (base 2) and delta
  for (int r = 0; r < 2; ++r) {
    lse2[r] = qi.ok[r] ? lse[qi.pos[r] * Hq + qi.h] * kLog2e : 0.0f;
    dl[r] = qi.ok[r] ? delta[qi.pos[r] * Hq + qi.h] : 0.0f;
  }
  const int64_t at = (int64_t(qi.b.begin) * Hq + qi.h) * D;
  LoadTileAsync(qs, q + at, Hq * D, qi.b.n, D);
  LoadTileAsync(dos, dout + at, Hq * D, qi.b.n, D);
  qi.LoadKeys(ks(0), vs(0), k, v, Hkv, D, 0);
  mma::CpAsyncCommit();

  float dqa[kD / 8][4];
#pragma unroll
  for (int j = 0; j < kD / 8; ++j)
#pragma unroll
    for (int i = 0; i < 4; ++i) dqa[j][i] = 0.0f;

  for (int it = 0; it < qi.ntiles; ++it) {
    if (it + 1 < qi.ntiles) qi.LoadKeys(ks((it + 1) % 2), vs((it + 1) % 2), k, v, Hkv, D, it + 1);
    mma::CpAsyncCommit();
    mma::CpAsyncWait<1>();
    __syncthreads();
    if (qi.WarpSees(it)) {
      const int nc = qi.Chunks(it);
      float s[kCols8][4], dp[kCols8][4];
      Scores<kD>(s, qs + r0 * ld, ks(it % 2), ld, D, nc, lane);
      Scores<kD>(dp, dos + r0 * ld, vs(it % 2), ld, D, nc, lane);
      auto stat = [&](int, int i, float* l2, float* d) {
        *l2 = lse2[i / 2];
        *d = dl[i / 2];
      };
      if (qi.Unmasked(it))  // an interior tile: no mask
        Weights(
            s, dp, scale2, [](int, int) { return true; }, stat);
      else
        Weights(
            s, dp, scale2, [&](int j, int i) { return qi.Seen(it, j, i, t); }, stat);
      uint32_t w[kBlk / 16][4];
      PackRows(w, dp);  // dS
      Accumulate<kD>(dqa, w, ks(it % 2), ld, D, nc, lane);
    }
    __syncthreads();
  }
  if (qi.last < r0) return;
  StoreRows<kD>(dq + ((int64_t(qi.b.begin) + r0) * Hq + qi.h) * D, Hq * D, dqa, scale, scale,
                qi.last - r0 + 1, D, lane);
}

template <int kD>
Status Launch(float* dq, float* dk, float* dv, const bf16* dout, const float* lse,
              const float* delta, const bf16* q, const bf16* k, const bf16* v, const Block* by_q,
              const Block* by_kv, int64_t nb, int64_t Hq, int64_t Hkv, int64_t D, float scale,
              cudaStream_t st) {
  const size_t tiles = 6 * TileBytes(int(D));
  const size_t kv_bytes = tiles + 2 * 2 * kBlk * sizeof(float);
  XT_RETURN_IF_ERROR(detail::PrepareSmem(AttentionBackwardKvMmaKernel<kD>, kv_bytes,
                                         "attention_backward_bf16 (mma dk, dv)"));
  XT_RETURN_IF_ERROR(detail::PrepareSmem(AttentionBackwardQMmaKernel<kD>, tiles,
                                         "attention_backward_bf16 (mma dq)"));
  XT_LAUNCH(AttentionBackwardKvMmaKernel<kD>, unsigned(nb * Hkv), kThreads, kv_bytes, st)
  (dk, dv, dout, lse, delta, q, k, v, by_kv, Hq, Hkv, int(D), scale);
  XT_RETURN_IF_ERROR(Check(cudaGetLastError(), "attention_backward_bf16 (mma dk, dv) launch"));
  XT_LAUNCH(AttentionBackwardQMmaKernel<kD>, unsigned(nb * Hq), kThreads, tiles, st)
  (dq, dout, lse, delta, q, k, v, by_q, Hq, Hkv, int(D), scale);
  return Check(cudaGetLastError(), "attention_backward_bf16 (mma dq) launch");
}

}  // namespace

namespace detail {

Status LaunchBackwardMma(float* dq, float* dk, float* dv, const bf16* dout, const float* lse,
                         const float* delta, const bf16* q, const bf16* k, const bf16* v,
                         const Block* by_q, const Block* by_kv, int64_t nb, int64_t Hq, int64_t Hkv,
                         int64_t D, float scale, cudaStream_t st) {
  if (D <= 64)
    return Launch<64>(dq, dk, dv, dout, lse, delta, q, k, v, by_q, by_kv, nb, Hq, Hkv, D, scale,
                      st);
  return Launch<128>(dq, dk, dv, dout, lse, delta, q, k, v, by_q, by_kv, nb, Hq, Hkv, D, scale, st);
}

}  // namespace detail
}  // namespace xt::cuda
