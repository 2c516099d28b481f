// ZeRO-3 ownership without MPI: on every mesh, the ranks' owned ranges tile the whole model's
// slab exactly once, and each rank's shard is about total / world.
#include "xtuner/dist/sharded_params.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "util/testing.h"

namespace xt {
namespace {

ModelConfig Moe() {
  auto c = ModelConfig::Load(testing::DataPath("qwen3_moe_tiny"));
  EXPECT_TRUE(c.ok());
  return *c;
}

class Ownership : public ::testing::TestWithParam<std::pair<int, int>> {};

TEST_P(Ownership, TilesTheSlabExactlyOnce) {
  const auto [world, ep] = GetParam();
  const ModelConfig cfg = Moe();
  const int64_t total = ParamLayout(cfg).total();
  std::vector<int> owners(total, 0);
  int64_t largest = 0;
  for (int r = 0; r < world; ++r) {
    auto mesh = MakeMesh(world, r, ep, cfg);
    ASSERT_TRUE(mesh.ok()) << mesh.status().message();
    int64_t shard = 0;
    for (const OwnedRange& o : OwnedRanges(cfg, *mesh)) {
      EXPECT_EQ(o.shard, shard);  // in shard order, without gaps
      shard += o.size;
      for (int64_t i = o.global; i < o.global + o.size; ++i) owners[i] += 1;
    }
    largest = std::max(largest, shard);
  }
  EXPECT_EQ(std::count(owners.begin(), owners.end(), 1), total);
  EXPECT_LT(double(largest), 1.1 * double(total) / world + 64 * 8);  // rounding per piece
}

INSTANTIATE_TEST_SUITE_P(Meshes, Ownership,
                         ::testing::Values(std::pair{1, 1}, std::pair{2, 1}, std::pair{3, 1},
                                           std::pair{2, 2}, std::pair{4, 2}, std::pair{4, 4},
                                           std::pair{8, 2}));

TEST(Mesh, ImpossibleMeshesAreNamedErrors) {
  const ModelConfig cfg = Moe();
  auto m = MakeMesh(4, 0, 3, cfg);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("does not divide the 4 ranks"), std::string::npos);
  ASSERT_NE(cfg.num_experts % 3, 0);
  m = MakeMesh(3, 0, 3, cfg);  // 3 ranks of ep for experts that 3 does not divide
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("does not divide the model's"), std::string::npos)
      << m.status().message();
  auto dense = ModelConfig::Load(testing::DataPath("qwen3_dense_tiny"));
  ASSERT_TRUE(dense.ok());
  m = MakeMesh(2, 0, 2, *dense);
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("no experts"), std::string::npos);
  m = MakeMesh(4, 3, 2, cfg);
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->dp, 2);
  EXPECT_EQ(m->dp_rank, 1);
  EXPECT_EQ(m->ep_rank, 1);
}

}  // namespace
}  // namespace xt
