// The auxiliary-loss-free bias update: its sign rule, and its application to ZeRO-3 shards (every
// bias element updated exactly once over the ranks, whatever the mesh).
#include "xtuner/train/router_bias.h"

#include <gtest/gtest.h>

#include "util/testing.h"
#include "xtuner/dist/mesh.h"

namespace xt {
namespace {

TEST(RouterBias, MovesTowardsTheMeanAndLeavesABalancedExpertAlone) {
  // Mean 3: expert 0 underloaded, 1 balanced, 2 and 3 over and under.
  EXPECT_EQ(RouterBiasDeltas({1, 3, 7, 1}, 0.5), (std::vector<float>{0.5f, 0.0f, -0.5f, 0.5f}));
  // A mean that is not an integer (10 / 3): nobody is exactly at it.
  EXPECT_EQ(RouterBiasDeltas({3, 4, 3}, 1.0), (std::vector<float>{1.0f, -1.0f, 1.0f}));
  EXPECT_EQ(RouterBiasDeltas({0, 0}, 1.0), (std::vector<float>{0.0f, 0.0f}));  // no tokens
}

TEST(RouterBias, EveryMeshUpdatesEachBiasOnce) {
  auto cfg = ModelConfig::Load(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(cfg.ok());
  const ParamLayout whole(*cfg);
  const std::vector<std::vector<int64_t>> counts = {{5, 0, 0, 0, 1, 1, 1, 0},
                                                    {0, 2, 2, 2, 2, 0, 0, 0}};
  for (auto [world, ep] : {std::pair{1, 1}, {2, 1}, {2, 2}, {4, 2}, {3, 1}}) {
    std::vector<float> global(whole.total(), 0.0f);
    for (int rank = 0; rank < world; ++rank) {
      auto mesh = MakeMesh(world, rank, ep, *cfg);
      ASSERT_TRUE(mesh.ok()) << mesh.status().message();
      const std::vector<OwnedRange> owned = OwnedRanges(*cfg, *mesh);
      int64_t shard_size = 0;
      for (const OwnedRange& r : owned) shard_size = std::max(shard_size, r.shard + r.size);
      std::vector<float> shard(shard_size, 0.0f);
      ApplyShardAdds(RouterBiasShardAdds(*cfg, counts, 0.25, owned), shard.data());
      for (const OwnedRange& r : owned)
        for (int64_t i = 0; i < r.size; ++i) global[r.global + i] += shard[r.shard + i];
    }
    for (int64_t l = 1, m = 0; l < 3; ++l, ++m) {
      const std::vector<float> want = RouterBiasDeltas(counts[m], 0.25);
      for (int64_t e = 0; e < 8; ++e)
        EXPECT_EQ(global[whole.layers[l].router_bias + e], want[e])
            << world << " ranks, ep " << ep << ", layer " << l << ", expert " << e;
    }
    double elsewhere = 0;
    for (float v : global) elsewhere += std::abs(v);
    for (int64_t m = 0; m < 2; ++m)
      for (float d : RouterBiasDeltas(counts[m], 0.25)) elsewhere -= std::abs(d);
    EXPECT_EQ(elsewhere, 0.0) << "something besides the biases changed";
  }
}

}  // namespace
}  // namespace xt
