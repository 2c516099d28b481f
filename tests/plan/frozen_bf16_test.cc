// plan/frozen_bf16.h: which of a LoRA run's frozen weights a GPU holds in bf16 only (against an
// oracle by name and shape on every fixture's layout), the ranges and granules that hold the
// rest, and the memory plan that counts them (Qwen3-30B-A3B on one GPU).
#include "xtuner/plan/frozen_bf16.h"

#include <gtest/gtest.h>

#include <string>

#include "util/cli.h"
#include "util/testing.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/lora.h"
#include "xtuner/plan/plan.h"

namespace xt {
namespace {

bool EndsWith(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

// The oracle: a matmul's weight is a frozen matrix (or stack of them) that is no norm, bias,
// buffer or adapter, no router (".gate.weight", GPT-OSS's ".router.weight") and no embedding
// (nor the lm_head that is the embedding).
bool IsFrozenMatmulWeight(const ParamInfo& p, const ParamLayout& layout) {
  return p.frozen && !p.is_norm && !p.is_bias && !p.no_grad && !p.lora && p.shape.size() >= 2 &&
         !EndsWith(p.name, ".gate.weight") && !EndsWith(p.name, ".router.weight") &&
         p.offset != layout.embed;
}

bool Covered(const SlabRanges& ranges, int64_t at, int64_t n) {
  for (const auto& [begin, count] : ranges)
    if (at >= begin && at + n <= begin + count) return true;
  return false;
}

bool Touched(const SlabRanges& ranges, int64_t at, int64_t n) {
  for (const auto& [begin, count] : ranges)
    if (at < begin + count && begin < at + n) return true;
  return false;
}

class FrozenBf16 : public ::testing::TestWithParam<const char*> {};

TEST_P(FrozenBf16, RangesAreTheFrozenMatmulWeights) {
  auto loaded = ModelConfig::Load(testing::DataPath(GetParam()));
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  EXPECT_TRUE(Bf16OnlyRanges(ParamLayout(*loaded)).empty()) << "without LoRA nothing is frozen";
  for (bool tied : {false, true}) {
    ModelConfig cfg = *loaded;
    cfg.tie_word_embeddings = tied;
    LoraSpec spec;
    spec.rank = 4;
    spec.alpha = 8;
    spec.targets = {"o_proj"};
    if (cfg.is_moe()) spec.expert_targets = {"mlp.experts.down_proj"};
    auto lora = ResolveLora(spec, cfg, "lora");
    ASSERT_TRUE(lora.ok()) << lora.status().message();
    cfg.lora = *lora;
    const ParamLayout layout(cfg);
    const SlabRanges bf16 = Bf16OnlyRanges(layout);
    int64_t matmul = 0;
    for (const ParamInfo& p : layout.params()) {
      const int64_t n = NumElements(p.shape);
      if (IsFrozenMatmulWeight(p, layout)) {
        matmul += n;
        EXPECT_TRUE(Covered(bf16, p.offset, n)) << GetParam() << ": " << p.name << " in fp32";
      } else {
        EXPECT_FALSE(Touched(bf16, p.offset, n)) << GetParam() << ": " << p.name << " in bf16";
      }
    }
    EXPECT_EQ(MappedBytes(bf16), matmul);
    for (size_t i = 1; i < bf16.size(); ++i)  // sorted, apart (adjacent ones merged)
      EXPECT_GT(bf16[i].first, bf16[i - 1].first + bf16[i - 1].second);
    const SlabRanges fp32 = Fp32Ranges(layout.total(), bf16);
    EXPECT_EQ(MappedBytes(fp32) + matmul, layout.total());
    for (const auto& [at, n] : fp32) EXPECT_FALSE(Touched(bf16, at, n));
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, FrozenBf16,
                         ::testing::Values("qwen3_dense_tiny", "qwen3_moe_tiny", "mixtral_tiny",
                                           "deepseek_v3_tiny", "variants/deepseek_v3_v4_plain_q",
                                           "variants/gpt_oss_tiny"));

TEST(FrozenBf16Ranges, ComplementAndGranules) {
  EXPECT_EQ(Fp32Ranges(100, {}), (SlabRanges{{0, 100}}));
  EXPECT_EQ(Fp32Ranges(100, {{0, 10}, {40, 60}}), (SlabRanges{{10, 30}}));
  EXPECT_EQ(Fp32Ranges(100, {{5, 10}, {20, 5}}), (SlabRanges{{0, 5}, {15, 5}, {25, 75}}));
  // Granules of 64 bytes (16 floats) over 100 floats (400 bytes: 7 granules, the last ragged):
  // widened outwards, merged where they meet, the end at the last granule's.
  EXPECT_EQ(GranuleMappings(100, {{1, 2}}, 64), (SlabRanges{{0, 64}}));
  EXPECT_EQ(GranuleMappings(100, {{15, 2}}, 64), (SlabRanges{{0, 128}}));
  EXPECT_EQ(GranuleMappings(100, {{1, 2}, {20, 1}, {40, 8}}, 64), (SlabRanges{{0, 192}}));
  EXPECT_EQ(GranuleMappings(100, {{1, 2}, {40, 8}}, 64), (SlabRanges{{0, 64}, {128, 64}}));
  EXPECT_EQ(GranuleMappings(100, {{90, 10}}, 64), (SlabRanges{{320, 128}}));
  EXPECT_EQ(GranuleMappings(100, {{0, 100}}, 64), (SlabRanges{{0, 448}}));
  EXPECT_EQ(MappedBytes(GranuleMappings(100, {{1, 2}, {40, 8}}, 64)), 128);
}

// Qwen3-30B-A3B, LoRA rank 16 on attention, bf16 on one GPU: the fp32 weights are the embedding,
// norms, routers and adapters, in whole 2 MiB granules; the plan's total drops by the rest
// (113 GiB); on two GPUs each shard holds its frozen matmul weights in bf16; in fp32, or with
// train.cuda_frozen_weights = "fp32", nothing changes.
TEST(FrozenBf16Plan, GpusHoldTheFrozenMatmulWeightsInBf16Only) {
  auto cfg = ModelConfig::Load(testing::DataPath("../../examples/configs/qwen3-30b-a3b.json"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  PlanInputs in;
  in.model = *cfg;
  in.model.lora.rank = 16;
  in.model.lora.alpha = 32;
  in.model.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj"};
  in.seq = 4096;
  in.device = Device::kCuda;
  in.precision = Precision::kBf16;
  auto plan = [&] {
    auto r = Plan(in);
    EXPECT_TRUE(r.ok()) << r.status().message();
    return r.ok() ? *r : PlanReport();
  };
  const PlanReport bf16_only = plan();
  in.frozen_bf16_only = false;
  const PlanReport fp32_held = plan();
  const ParamLayout layout(in.model);
  const int64_t total = layout.total();
  // Per layer q, k, v, o (18.9M) and 128 experts' gate_up and down (604.0M); the lm_head.
  const int64_t matmul = int64_t(48) * (18874368 + 603979776) + int64_t(151936) * 2048;
  EXPECT_EQ(bf16_only.bf16_only_params, matmul);
  EXPECT_EQ(fp32_held.bf16_only_params, 0);
  EXPECT_EQ(fp32_held.weight_bytes, 4 * total);
  EXPECT_EQ(bf16_only.weight_bytes,
            MappedBytes(GranuleMappings(total, Fp32Ranges(total, Bf16OnlyRanges(layout)),
                                        kGpuGranularity)));
  // Each range left in fp32 (a layer's first norm; its other norms, router and adapters; the
  // embedding; the final norm) widened by less than a granule at each end.
  const int64_t fp32_ranges = int64_t(Fp32Ranges(total, Bf16OnlyRanges(layout)).size());
  EXPECT_EQ(fp32_ranges, 2 * 48 + 1);
  EXPECT_GE(bf16_only.weight_bytes, 4 * (total - matmul));
  EXPECT_LT(bf16_only.weight_bytes, 4 * (total - matmul) + 2 * fp32_ranges * kGpuGranularity);
  EXPECT_EQ(fp32_held.total_bytes - bf16_only.total_bytes,
            fp32_held.weight_bytes - bf16_only.weight_bytes);
  EXPECT_GT(double(fp32_held.total_bytes - bf16_only.total_bytes), 112.0 * (1 << 30));
  // The host keeps the whole fp32 model it uploads from and syncs back to (and the adapters'
  // moments), with the GPU's copy in bf16 or not.
  EXPECT_EQ(bf16_only.host_bytes, 4 * total + bf16_only.optimizer_bytes);
  EXPECT_EQ(fp32_held.host_bytes, bf16_only.host_bytes);
  EXPECT_NE(FormatPlan(in, bf16_only).find("host memory per rank: 113.89 GiB"), std::string::npos)
      << FormatPlan(in, bf16_only);
  EXPECT_NE(FormatPlan(in, bf16_only).find("weights (fp32; frozen matmul ones: bf16 only)"),
            std::string::npos);
  // Two GPUs: each holds half the frozen matmul weights in bf16 in its shard (2 B each), the
  // rest of its half in fp32 in whole granules (rank 0's shard, as ShardedParams lays it out);
  // with the fp32 copy kept, 4 B each.
  in.world = 2;
  const PlanReport two_fp32 = plan();
  in.frozen_bf16_only = true;
  const PlanReport two = plan();
  // (About half: rank 0's chunks start the layers, with their norms, routers and adapters.)
  EXPECT_NEAR(double(two.bf16_only_params), double(matmul) / 2, 1e-3 * double(matmul));
  auto mesh = MakeMesh(2, 0, 1, in.model);
  ASSERT_TRUE(mesh.ok());
  int64_t shard = 0;
  const SlabRanges held16 = ShardBf16Ranges(in.model, *mesh, Bf16OnlyRanges(layout), &shard);
  EXPECT_EQ(shard, two.local_params);
  EXPECT_EQ(MappedBytes(held16), two.bf16_only_params);
  const int64_t shard_fp32_ranges = int64_t(Fp32Ranges(shard, held16).size());
  const int64_t exact = 4 * (two.local_params - two.bf16_only_params) + 2 * two.bf16_only_params;
  EXPECT_GE(shard_fp32_ranges, 2 * 48);
  EXPECT_GE(two.weight_bytes, exact);
  EXPECT_LT(two.weight_bytes, exact + 2 * shard_fp32_ranges * kGpuGranularity);
  EXPECT_EQ(two_fp32.weight_bytes, 4 * two_fp32.local_params);
  EXPECT_EQ(two_fp32.total_bytes - two.total_bytes, two_fp32.weight_bytes - two.weight_bytes);
  // Where nothing is held in bf16 only: fp32 matmuls; the CPU.
  in.world = 1;
  in.precision = Precision::kFp32;
  EXPECT_EQ(plan().bf16_only_params, 0);
  in.device = Device::kCpu;
  in.precision = Precision::kBf16;
  EXPECT_EQ(plan().bf16_only_params, 0);
  EXPECT_EQ(plan().host_bytes, 0);  // (a CPU run's state is all in its table)
}

// `xtuner plan --cuda-frozen-weights auto|fp32` (train.cuda_frozen_weights): the weights' row.
TEST(FrozenBf16Plan, TheCliTakesTheSetting) {
  const std::string run = "plan --model " +
                          testing::DataPath("../../examples/configs/qwen3-30b-a3b.json") +
                          " --seq 64 --device cuda --precision bf16 --lora-rank 8";
  const testing::CliRun bf16 = testing::RunXtuner(run);
  EXPECT_EQ(bf16.code, 0) << bf16.output;
  EXPECT_NE(bf16.output.find("weights (fp32; frozen matmul ones: bf16 only)"), std::string::npos)
      << bf16.output;
  const testing::CliRun fp32 = testing::RunXtuner(run + " --cuda-frozen-weights fp32");
  EXPECT_EQ(fp32.code, 0) << fp32.output;
  EXPECT_NE(fp32.output.find("weights (fp32 master, sharded)"), std::string::npos) << fp32.output;
}

}  // namespace
}  // namespace xt
