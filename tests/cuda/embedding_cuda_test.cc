// CUDA embedding forward and backward against their CPU twins (ops::embedding_forward/backward)
// on random and awkward shapes. Both are bit-identical: the forward copies, and the backward
// adds each row's tokens in token order onto the table's row, as the CPU does. Skipped (label
// `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using cudatest::DeviceVec;

// (T, V, H)
class EmbeddingCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, int64_t>> {};

TEST_P(EmbeddingCuda, MatchesTheCpuTwinBitForBit) {
  const auto [T, V, H] = GetParam();
  std::mt19937 rng(unsigned(T * 1009 + V * 31 + H));
  std::normal_distribution<float> dist(0.0f, 1.0f);
  std::uniform_int_distribution<int32_t> any_id(0, int32_t(V - 1));
  std::bernoulli_distribution frequent(0.3);  // id 0 (say, padding) takes ~30% of the tokens
  std::vector<int32_t> ids(T);
  for (int32_t& id : ids) id = frequent(rng) ? 0 : any_id(rng);
  if (T > 0) ids[T - 1] = int32_t(V - 1);  // the largest id: all of the sort's bits
  std::vector<float> table(V * H), dout(T * H), dtable0(V * H);
  for (float& v : table) v = dist(rng);
  for (float& v : dout) v = dist(rng);
  for (float& v : dtable0) v = dist(rng);

  std::vector<float> out(T * H), dtable = dtable0;
  ops::embedding_forward(out.data(), ids.data(), table.data(), T, H);
  ops::embedding_backward(dtable.data(), dout.data(), ids.data(), T, V, H);

  DeviceVec<int32_t> gids(ids);
  DeviceVec<float> gtable(table), gdout(dout), gout{std::vector<float>(T * H)}, gdtable(dtable0);
  ASSERT_TRUE(cuda::EmbeddingForward(gout.p, gids.p, gtable.p, T, H).ok());
  const Status s = cuda::EmbeddingBackward(gdtable.p, gdout.p, gids.p, T, V, H);
  ASSERT_TRUE(s.ok()) << s.message();
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout.Host(), out, "out");
  cudatest::ExpectBitEqual(gdtable.Host(), dtable, "dtable");
}

// The test's name suffix: its shape.
std::string ParamName(const ::testing::TestParamInfo<EmbeddingCuda::ParamType>& info) {
  const auto& [T, V, H] = info.param;
  return std::to_string(T) + "x" + std::to_string(V) + "x" + std::to_string(H);
}

// One token, repeated ids (V small), one id for every token (V = 1: one long run), a vocabulary
// larger than the tokens, H not a multiple of 32 and larger than a block, zero tokens, H = 0.
INSTANTIATE_TEST_SUITE_P(Shapes, EmbeddingCuda,
                         ::testing::Values(std::tuple<int64_t, int64_t, int64_t>{1, 1, 1},
                                           std::tuple<int64_t, int64_t, int64_t>{7, 3, 5},
                                           std::tuple<int64_t, int64_t, int64_t>{1000, 1, 3},
                                           std::tuple<int64_t, int64_t, int64_t>{100, 1000, 33},
                                           std::tuple<int64_t, int64_t, int64_t>{257, 5, 64},
                                           std::tuple<int64_t, int64_t, int64_t>{2048, 151936, 40},
                                           std::tuple<int64_t, int64_t, int64_t>{4096, 50, 1024},
                                           std::tuple<int64_t, int64_t, int64_t>{0, 10, 8},
                                           std::tuple<int64_t, int64_t, int64_t>{5, 10, 0}),
                         ParamName);

}  // namespace
}  // namespace xt
