// cuda::SparseSlab (a device array whose memory is mapped only where asked) and the granule
// arithmetic it shares with the memory plan (plan/frozen_bf16.h): the memory it holds is the
// plan's, its held ranges keep what is written there, and (where the emulator can show it) the
// ranges it does not hold are no memory at all: a copy there fails and a read faults. Skipped
// (label `cuda`) without a GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/sparse_slab.h"
#include "xtuner/plan/frozen_bf16.h"

namespace xt {
namespace {

class SparseSlabCuda : public cudatest::CudaTest<int> {};

TEST_P(SparseSlabCuda, HoldsItsRangesAndNothingElse) {
  const Status supported = cuda::SparseSlab::Supported();  // (H100, H200 and the emulator)
  ASSERT_TRUE(supported.ok()) << supported.message();
  auto g = cuda::SparseSlab::Granularity();
  ASSERT_TRUE(g.ok()) << g.status().message();
  ASSERT_GT(*g, 0);
  ASSERT_EQ(*g % 4, 0);
  const int64_t per = *g / 4;  // floats per granule
  // Ten granules and a ragged end: a range inside the first, one across the third and fourth,
  // one that ends the slab mid-granule; granules 1, 4 to 7 hold nothing.
  const int64_t n = 10 * per + per / 2;
  const SlabRanges held = {{3, 5}, {3 * per - 2, 4}, {8 * per + 1, n - 8 * per - 1}};
  auto slab = cuda::SparseSlab::Create(n, held);
  ASSERT_TRUE(slab.ok()) << slab.status().message();
  EXPECT_EQ((*slab)->size(), n);
  const SlabRanges mapped = GranuleMappings(n, held, *g);
  const SlabRanges want = {{0, *g}, {2 * *g, 2 * *g}, {8 * *g, 3 * *g}};
  EXPECT_EQ(mapped, want);
  EXPECT_EQ((*slab)->held_bytes(), MappedBytes(want));

  float* p = (*slab)->data();
  for (const auto& [at, k] : held) {
    std::vector<float> in(static_cast<size_t>(k)), out(static_cast<size_t>(k));
    for (int64_t i = 0; i < k; ++i) in[size_t(i)] = float(at + i) * 0.5f;
    ASSERT_EQ(cudaMemcpy(p + at, in.data(), size_t(k) * 4, cudaMemcpyHostToDevice), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(out.data(), p + at, size_t(k) * 4, cudaMemcpyDeviceToHost), cudaSuccess);
    EXPECT_EQ(out, in) << "range at " << at;
  }
#ifdef XTUNER_CUDA_EMU
  // The emulator's device memory is the host's: what the slab does not hold is no memory.
  float one = 1;
  EXPECT_NE(cudaMemcpy(p + per + 3, &one, 4, cudaMemcpyHostToDevice), cudaSuccess);
  cudaGetLastError();
  float two[2] = {1, 2};
  EXPECT_NE(cudaMemcpy(p + 4 * per - 1, two, 8, cudaMemcpyHostToDevice), cudaSuccess)
      << "a copy that runs past the granules held";
  cudaGetLastError();
  EXPECT_DEATH({ one = static_cast<volatile float*>(p)[5 * per]; }, "");
  EXPECT_DEATH({ static_cast<volatile float*>(p)[7 * per + per - 1] = 2; }, "");
#endif
}

TEST_P(SparseSlabCuda, RefusesNoFloats) { EXPECT_FALSE(cuda::SparseSlab::Create(0, {}).ok()); }

INSTANTIATE_TEST_SUITE_P(Once, SparseSlabCuda, ::testing::Values(0));

}  // namespace
}  // namespace xt
