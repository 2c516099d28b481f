// ZeRO-3 ownership without MPI: on every mesh, the ranks' owned ranges tile the whole model's
// slab exactly once, and each rank's shard is about total / world.
#include "xtuner/dist/sharded_params.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "util/costly_zeros.h"
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

namespace xt {
namespace {

// One rank holds every unit: ZeroGrads is lazy. A unit asked for by Grads comes zeroed (the
// CPU model adds into it); GradsToWrite hands it out blank until GradsDone (the GPU model writes
// it whole), not after; grads() zeroes what is still blank, and keeps what was written; a writer
// that stops before GradsDone (a failed step) leaves its unit blank, to be zeroed.
TEST(ShardedParamsOneRank, ZeroGradsIsLazyAndNothingReadsStaleGradients) {
  const ModelConfig cfg = Moe();
  auto mesh = MakeMesh(1, 0, 1, cfg);
  ASSERT_TRUE(mesh.ok()) << mesh.status().message();
  auto world = MakeSingleComm(), dp = MakeSingleComm();
  ShardedParams store(cfg, *mesh, world.get(), dp.get());
  const ParamLayout& layout = store.layout();
  const int64_t units = int64_t(layout.units().size());
  ASSERT_GE(units, 4);
  for (int64_t u = 0; u < units; ++u) EXPECT_TRUE(store.Held(u)) << u;
  float* const base = store.grads();
  std::fill(base, base + store.shard_size(), 7.0f);  // last step's
  store.ZeroGrads();
  auto unit = [&](int64_t u) {
    return std::vector<float>(store.grads() + layout.units()[u].begin,
                              store.grads() + layout.units()[u].end);
  };
  // Unit 0 through Grads: zeroed, and stays addable.
  float* g0 = store.Grads(0);
  EXPECT_EQ(g0, base + layout.units()[0].begin);
  EXPECT_TRUE(std::all_of(g0, g0 + layout.units()[0].size(), [](float x) { return x == 0.0f; }));
  g0[0] += 1.0f;
  store.GradsDone(0);
  // Unit 1 through GradsToWrite: blank (contents untouched), then written.
  bool blank = false;
  float* g1 = store.GradsToWrite(1, &blank);
  EXPECT_TRUE(blank);
  EXPECT_EQ(g1[0], 7.0f);  // not zeroed: the writer assigns
  std::fill(g1, g1 + layout.units()[1].size(), 2.0f);
  store.GradsDone(1);
  EXPECT_EQ(store.GradsToWrite(1, &blank), g1);
  EXPECT_FALSE(blank);  // written once this step: the next micro-batch adds
  store.GradsDone(1);
  // Unit 3: a writer that fails midway (no GradsDone).
  float* g3 = store.GradsToWrite(3, &blank);
  EXPECT_TRUE(blank);
  g3[0] = 9.0f;
  // grads(): the units nobody finished come zeroed; what was written stays.
  const std::vector<float> u0 = unit(0), u1 = unit(1), u2 = unit(2), u3 = unit(3);
  EXPECT_EQ(u0[0], 1.0f);
  EXPECT_TRUE(std::all_of(u1.begin(), u1.end(), [](float x) { return x == 2.0f; }));
  EXPECT_TRUE(std::all_of(u2.begin(), u2.end(), [](float x) { return x == 0.0f; }));
  EXPECT_TRUE(std::all_of(u3.begin(), u3.end(), [](float x) { return x == 0.0f; }));
  // Another step: blank again.
  store.ZeroGrads();
  store.GradsToWrite(2, &blank);
  EXPECT_TRUE(blank);
  store.GradsDone(2);
}

// The tiny Qwen3-MoE with rank-2 adapters on q_proj and o_proj.
ModelConfig MoeWithLora() {
  ModelConfig cfg = Moe();
  cfg.lora.rank = 2;
  cfg.lora.alpha = 4;
  cfg.lora.targets = {"q_proj", "o_proj"};
  return cfg;
}

// LoRA: only the adapters train. Grads hands out their gradients alone (null for a unit with
// none), which ZeroGrads and Grads zero, leaving the frozen weights' alone (never written, so
// still what they were); the pages of a fresh shard's gradients are committed only for what is
// written. On the host the gradients stay at shard offsets (their zeros are free).
TEST(ShardedParamsOneRank, LoraZeroesAndCommitsOnlyTheAdapters) {
  const ModelConfig cfg = MoeWithLora();
  auto mesh = MakeMesh(1, 0, 1, cfg);
  ASSERT_TRUE(mesh.ok()) << mesh.status().message();
  auto world = MakeSingleComm(), dp = MakeSingleComm();
  ShardedParams store(cfg, *mesh, world.get(), dp.get());
  const ParamLayout& layout = store.layout();
  int64_t adapters = 0;
  for (const ParamInfo& p : layout.params())
    if (p.lora) adapters += NumElements(p.shape);
  EXPECT_EQ(store.trainable_floats(), adapters);
  EXPECT_FALSE(store.compact_grads());
  // A step's zeroing and gradients commit the adapters' pages only (mincore also counts pages
  // only read, so nothing reads the shard before this).
  float* const g = store.grads();
  const int64_t bytes = store.shard_size() * 4, page = sysconf(_SC_PAGESIZE);
  EXPECT_EQ(testing::ResidentBytes(g, bytes), 0);
  store.ZeroGrads();
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
    store.Grads(u);
    store.GradsDone(u);
  }
  EXPECT_LE(testing::ResidentBytes(g, bytes),
            adapters * 4 + 2 * page * int64_t(layout.units().size()));
  std::fill(g, g + store.shard_size(), 7.0f);
  store.ZeroGrads();
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
    float* gu = store.Grads(u);
    const ParamUnit& unit = layout.units()[u];
    const ParamUnit& t = layout.trainable(u);
    EXPECT_EQ(gu, t.size() > 0 ? g + t.begin : nullptr) << u;
    for (int64_t i = unit.begin; i < unit.end; ++i)  // (one rank: shard offsets are the layout's)
      ASSERT_EQ(g[i], i >= t.begin && i < t.end ? 0.0f : 7.0f) << u << " " << i;
    store.GradsDone(u);
  }
}

// LoRA over such memory: the gradients are the adapters' alone, each unit's one after another
// in shard order (the trainable ranges'), handed out by Grads and GradsToWrite from there; the
// lazy zeroing covers them.
TEST(ShardedParamsOneRank, LoraOverCostlyZerosHoldsTheAdaptersGradientsAlone) {
  const ModelConfig cfg = MoeWithLora();
  auto mesh = MakeMesh(1, 0, 1, cfg);
  ASSERT_TRUE(mesh.ok()) << mesh.status().message();
  auto world = MakeSingleComm(), dp = MakeSingleComm();
  testing::CostlyZeros memory;
  ShardedParams store(cfg, *mesh, world.get(), dp.get(), &memory);
  const ParamLayout& layout = store.layout();
  ASSERT_TRUE(store.compact_grads());
  const int64_t n = store.trainable_floats();
  ASSERT_LT(n, store.shard_size());
  float* const g = store.grads();
  std::fill(g, g + n, 7.0f);
  store.ZeroGrads();
  int64_t at = 0;  // where the next unit's gradients start
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
    const int64_t k = layout.trainable(u).size();
    bool blank = false;
    float* gu = store.GradsToWrite(u, &blank);
    if (k == 0) {
      EXPECT_EQ(gu, nullptr) << u;
      store.GradsDone(u);
      continue;
    }
    EXPECT_EQ(gu, g + at) << u;
    EXPECT_TRUE(blank) << u;
    std::fill(gu, gu + k, float(u));
    store.GradsDone(u);
    at += k;
  }
  EXPECT_EQ(at, n);
  // The trainable ranges (shard coordinates: on one rank the layout's) are what those gradients
  // stand for, in the same order.
  std::vector<std::pair<int64_t, int64_t>> want;
  for (int64_t u = 0; u < int64_t(layout.units().size()); ++u)
    if (layout.trainable(u).size() > 0)
      want.push_back({layout.trainable(u).begin, layout.trainable(u).size()});
  EXPECT_EQ(store.trainable_ranges(), want);
  store.ZeroGrads();
  const float* zeroed = store.grads();  // the blank units zeroed
  EXPECT_TRUE(std::all_of(zeroed, zeroed + n, [](float x) { return x == 0.0f; }));
}

}  // namespace
}  // namespace xt
