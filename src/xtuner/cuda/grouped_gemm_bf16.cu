// The experts' bf16 products in one launch (grouped_gemm_bf16.h): 128 x 128 output tiles of
// 8 warps, K in steps of 32 through a 3-stage cp.async pipeline, mma.sync m16n8k16.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/cuda/device.h"
#include "xtuner/cuda/grouped_gemm_bf16.h"
#include "xtuner/cuda/launch.h"
#include "xtuner/cuda/mma_sm80.h"

namespace xt::cuda {
namespace {

using bf16 = __nv_bfloat16;

constexpr int kTile = 128;               // output rows and columns of a CUDA block
constexpr int kStepK = 32;               // k of a pipeline stage
constexpr int kStages = 3;               // stages in flight
constexpr int kThreads = 256;            // 8 warps: 2 (rows) x 4 (columns)
constexpr int kWarpM = 64, kWarpN = 32;  // a warp's part of the tile
// Shared tiles, 16-byte rows padded by 8 elements (8 consecutive rows' pieces on distinct
// banks): (128, 32 + 8) when the tile's rows are the m or n index, (32, 128 + 8) when they are k.
constexpr int kLdShort = kStepK + 8, kLdLong = kTile + 8;
constexpr int kSlot = kTile * kLdShort;  // elements of one operand's stage (the larger layout)
constexpr size_t kSmemBytes = size_t(2 * kStages * kSlot) * sizeof(bf16);  // 61 440
static_assert(kStepK * kLdLong <= kSlot, "both layouts fit a slot");

// One 128 x 128 output tile of expert e.
struct Tile {
  int32_t e, m0, n0;
};

// Operand storage: a (m, k) or, for kWeight, (k, m); b (n, k) for kForward, else (k, n).
template <GroupedOp kOp>
struct Layout {
  static constexpr bool kATrans = kOp == GroupedOp::kWeight;   // a stored (K, M)
  static constexpr bool kBRowsN = kOp == GroupedOp::kForward;  // b stored (N, K)
};

template <GroupedOp kOp>
__global__ void __launch_bounds__(kThreads, 2)  // two blocks an SM: at most 128 registers
    GroupedGemmKernel(float* c, const bf16* a, const bf16* b, const int32_t* offsets,
                      const Tile* tiles, int64_t M, int64_t N, int64_t K, bool add) {
  using L = Layout<kOp>;
  XT_DYNAMIC_SHARED(bf16, smem);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const int wm = warp / 4 * kWarpM, wn = warp % 4 * kWarpN;  // the warp's corner in the tile
  const Tile tile = tiles[blockIdx.x];
  const int64_t r0 = offsets[tile.e], rows = offsets[tile.e + 1] - r0;
  // The expert's operands and output, and its M (rows) or K (rows).
  const int64_t m_e = kOp == GroupedOp::kWeight ? M : rows;
  const int64_t k_e = kOp == GroupedOp::kWeight ? rows : K;
  const bf16* a_e = a + r0 * (kOp == GroupedOp::kWeight ? M : K);
  const bf16* b_e = kOp == GroupedOp::kWeight ? b + r0 * N : b + int64_t(tile.e) * N * K;
  float* c_e = kOp == GroupedOp::kWeight ? c + int64_t(tile.e) * M * N : c + r0 * N;
  auto as = [&](int s) { return smem + (2 * s) * kSlot; };
  auto bs = [&](int s) { return smem + (2 * s + 1) * kSlot; };
  auto load = [&](int kt) {
    const int s = kt % kStages;
    const int64_t k0 = int64_t(kt) * kStepK;
    if (L::kATrans)
      mma::CopyWindowAsync(as(s), kLdLong, a_e, M, k0, tile.m0, kStepK, kTile, k_e, m_e, kThreads);
    else
      mma::CopyWindowAsync(as(s), kLdShort, a_e, K, tile.m0, k0, kTile, kStepK, m_e, k_e, kThreads);
    if (L::kBRowsN)
      mma::CopyWindowAsync(bs(s), kLdShort, b_e, K, tile.n0, k0, kTile, kStepK, N, k_e, kThreads);
    else
      mma::CopyWindowAsync(bs(s), kLdLong, b_e, N, k0, tile.n0, kStepK, kTile, k_e, N, kThreads);
  };

  float acc[kWarpM / 16][kWarpN / 8][4];
#pragma unroll
  for (int mi = 0; mi < kWarpM / 16; ++mi)
#pragma unroll
    for (int nj = 0; nj < kWarpN / 8; ++nj)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mi][nj][i] = 0.0f;

  const int nk = int((k_e + kStepK - 1) / kStepK);
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < nk) load(s);
    mma::CpAsyncCommit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    mma::CpAsyncWait<kStages - 2>();  // stage kt has landed (this thread's copies)
    __syncthreads();                  // everyone's; and stage kt - 1 is no longer read
    if (kt + kStages - 1 < nk) load(kt + kStages - 1);
    mma::CpAsyncCommit();
    const bf16* at = as(kt % kStages);
    const bf16* bt = bs(kt % kStages);
#pragma unroll
    for (int kk = 0; kk < kStepK; kk += 16) {
      uint32_t af[kWarpM / 16][4], bfr[kWarpN / 16][4];
#pragma unroll
      for (int mi = 0; mi < kWarpM / 16; ++mi) {
        if (L::kATrans)
          mma::LdAt(af[mi], at, kLdLong, wm + mi * 16, kk, lane);
        else
          mma::LdA(af[mi], at, kLdShort, wm + mi * 16, kk, lane);
      }
#pragma unroll
      for (int np = 0; np < kWarpN / 16; ++np) {
        if (L::kBRowsN)
          mma::LdBt(bfr[np], bt, kLdShort, wn + np * 16, kk, lane);
        else
          mma::LdB(bfr[np], bt, kLdLong, wn + np * 16, kk, lane);
      }
#pragma unroll
      for (int mi = 0; mi < kWarpM / 16; ++mi)
#pragma unroll
        for (int np = 0; np < kWarpN / 16; ++np) {
          mma::MmaHalf(acc[mi][2 * np], af[mi], bfr[np], 0);
          mma::MmaHalf(acc[mi][2 * np + 1], af[mi], bfr[np], 1);
        }
    }
  }

  // c (assigned, or += for kWeight with `add`): this thread's rows g, g + 8 of each m16 tile, two
  // adjacent columns each, as one 8-byte access where c's rows allow it (N even, c 8-byte
  // aligned).
  const bool plus = kOp == GroupedOp::kWeight && add;
  const bool pairs = N % 2 == 0 && reinterpret_cast<uintptr_t>(c) % 8 == 0;
#pragma unroll
  for (int mi = 0; mi < kWarpM / 16; ++mi)
#pragma unroll
    for (int nj = 0; nj < kWarpN / 8; ++nj)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int64_t row = tile.m0 + wm + mi * 16 + g + 8 * h;
        const int64_t col = tile.n0 + wn + nj * 8 + 2 * t;
        if (row >= m_e || col >= N) continue;
        float* p = c_e + row * N + col;
        float2 v = make_float2(acc[mi][nj][2 * h], acc[mi][nj][2 * h + 1]);
        if (pairs) {  // col even and N even: col + 1 < N
          if (plus) {
            const float2 old = *reinterpret_cast<const float2*>(p);
            v.x += old.x;
            v.y += old.y;
          }
          *reinterpret_cast<float2*>(p) = v;
        } else {
          p[0] = plus ? p[0] + v.x : v.x;
          if (col + 1 < N) p[1] = plus ? p[1] + v.y : v.y;
        }
      }
}

template <GroupedOp kOp>
Status Launch(float* c, const bf16* a, const bf16* b, const int32_t* offsets, const Tile* tiles,
              int64_t count, int64_t M, int64_t N, int64_t K, bool add, cudaStream_t st) {
  XT_RETURN_IF_ERROR(
      detail::PrepareSmem(GroupedGemmKernel<kOp>, kSmemBytes, "grouped GEMM (xtuner's kernel)"));
  XT_LAUNCH(GroupedGemmKernel<kOp>, unsigned(count), kThreads, kSmemBytes, st)
  (c, a, b, offsets, tiles, M, N, K, add);
  return Check(cudaGetLastError(), "grouped GEMM (xtuner's kernel) launch");
}

}  // namespace

bool GroupedGemmBf16Supports(GroupedOp op, int64_t M, int64_t N, int64_t K) {
  switch (op) {
    case GroupedOp::kForward:
      return N > 0 && K > 0 && K % 8 == 0;
    case GroupedOp::kData:
      return N > 0 && K > 0 && K % 8 == 0 && N % 8 == 0;
    case GroupedOp::kWeight:
      return M > 0 && N > 0 && M % 8 == 0 && N % 8 == 0;
  }
  return false;
}

Status GroupedGemmBf16(GroupedOp op, float* c, const void* a, const void* b, const int32_t* offsets,
                       int64_t E, int64_t M, int64_t N, int64_t K, void* stream, bool add) {
  const char* what = "grouped GEMM (xtuner's kernel)";
  if (!GroupedGemmBf16Supports(op, M, N, K))
    return Status::Error(std::string(what) + ": unsupported dims M " + std::to_string(M) + ", N " +
                         std::to_string(N) + ", K " + std::to_string(K));
  if (E < 1) return Status::Error(std::string(what) + ": need E >= 1");
  XT_RETURN_IF_ERROR(detail::CheckExpertOffsets(what, offsets, E));
  if (reinterpret_cast<uintptr_t>(a) % 16 != 0 || reinterpret_cast<uintptr_t>(b) % 16 != 0)
    return Status::Error(std::string(what) + ": operands not 16-byte aligned");
  XT_RETURN_IF_ERROR(detail::Bf16TensorCores(what));
  // The tiles of every expert with rows, the longest K first (kWeight: K is the expert's rows);
  // assigning kWeight's also those of the experts without rows (K = 0: they store zeros).
  const bool zero_empty = op == GroupedOp::kWeight && !add;
  const int64_t tiles_n = (N + kTile - 1) / kTile;
  std::vector<Tile> tiles;
  std::vector<int64_t> order;
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] > offsets[e] || zero_empty) order.push_back(e);
  if (op == GroupedOp::kWeight)
    std::stable_sort(order.begin(), order.end(), [&](int64_t x, int64_t y) {
      return offsets[x + 1] - offsets[x] > offsets[y + 1] - offsets[y];
    });
  for (int64_t e : order) {
    const int64_t m = op == GroupedOp::kWeight ? M : offsets[e + 1] - offsets[e];
    for (int64_t m0 = 0; m0 < m; m0 += kTile)
      for (int64_t n = 0; n < tiles_n; ++n)
        tiles.push_back({int32_t(e), int32_t(m0), int32_t(n * kTile)});
  }
  if (tiles.empty()) return Status::OK();
  if (int64_t(tiles.size()) > int64_t(INT32_MAX))
    return Status::Error(std::string(what) + ": too many tiles");
  const cudaStream_t st = cudaStream_t(stream);
  detail::Scratch scratch(st);
  Tile* tiles_d = nullptr;
  int32_t* offsets_d = nullptr;
  Status s = scratch.Alloc(&tiles_d, int64_t(tiles.size()), what);
  if (s.ok()) s = scratch.Alloc(&offsets_d, E + 1, what);
  // From pageable memory: staged before the calls return, so the vectors may go afterwards.
  if (s.ok())
    s = Check(cudaMemcpyAsync(tiles_d, tiles.data(), tiles.size() * sizeof(Tile),
                              cudaMemcpyHostToDevice, st),
              what);
  if (s.ok())
    s = Check(cudaMemcpyAsync(offsets_d, offsets, size_t(E + 1) * sizeof(int32_t),
                              cudaMemcpyHostToDevice, st),
              what);
  const auto* a16 = static_cast<const bf16*>(a);
  const auto* b16 = static_cast<const bf16*>(b);
  const int64_t count = int64_t(tiles.size());
  if (s.ok()) {
    switch (op) {
      case GroupedOp::kForward:
        s = Launch<GroupedOp::kForward>(c, a16, b16, offsets_d, tiles_d, count, M, N, K, add, st);
        break;
      case GroupedOp::kData:
        s = Launch<GroupedOp::kData>(c, a16, b16, offsets_d, tiles_d, count, M, N, K, add, st);
        break;
      case GroupedOp::kWeight:
        s = Launch<GroupedOp::kWeight>(c, a16, b16, offsets_d, tiles_d, count, M, N, K, add, st);
        break;
    }
  }
  const Status freed = scratch.Release(what);
  return s.ok() ? freed : s;
}

}  // namespace xt::cuda
