// The step profile (cuda/step_profile.h): the phases a CUDA model's step marks, that timing them
// changes no result, and the profile's bookkeeping. Skipped (label `cuda`) where no GPU is
// present.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "util/testing.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/cuda/step_profile.h"
#include "xtuner/model/checkpoint.h"

namespace xt {
namespace {

class StepProfileCuda : public cudatest::CudaTest<int> {};

std::map<std::string, double> Totals(const cuda::StepProfile& p) {
  return {p.totals().begin(), p.totals().end()};
}

TEST_F(StepProfileCuda, AddsUpPhasesByNameAndDropsAnUnfinishedStep) {
  cuda::StepProfile p;
  ASSERT_TRUE(p.Finish(nullptr).ok());  // no marks: nothing to add
  EXPECT_EQ(p.steps(), 0);
  EXPECT_TRUE(p.totals().empty());
  ASSERT_TRUE(p.Mark("lost", nullptr).ok());
  p.Begin();  // the step that marked "lost" failed midway
  for (const char* name : {"a", "b", "a"}) ASSERT_TRUE(p.Mark(name, nullptr).ok());
  ASSERT_TRUE(p.Finish(nullptr).ok());
  ASSERT_TRUE(p.Mark("b", nullptr).ok());
  ASSERT_TRUE(p.Finish(nullptr).ok());
  EXPECT_EQ(p.steps(), 2);
  ASSERT_EQ(p.totals().size(), 2u);  // first-seen order, "lost" dropped
  EXPECT_EQ(p.totals()[0].first, "a");
  EXPECT_EQ(p.totals()[1].first, "b");
  for (const auto& [name, ms] : p.totals()) EXPECT_TRUE(std::isfinite(ms) && ms >= 0) << name;
  p.Reset();
  EXPECT_EQ(p.steps(), 0);
  EXPECT_TRUE(p.totals().empty());
}

// The MoE fixture (q/k norm, MoE layers) with its first layer recomputed: every phase is marked,
// and the profiled step's loss and gradients are the unprofiled step's, bit for bit.
TEST_F(StepProfileCuda, MarksEveryPhaseOfTheModelAndChangesNothing) {
  const std::string fixture = "qwen3_moe_tiny";
  auto cfg = ModelConfig::Load(testing::DataPath(fixture));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  ASSERT_TRUE(cfg->qk_norm && cfg->is_moe() && cfg->num_layers >= 2);
  Transformer cpu(*cfg);
  ASSERT_TRUE(LoadHfWeights(&cpu, testing::DataPath(fixture)).ok());
  std::vector<int64_t> ids(40);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int64_t((i * 37 + 11) % cfg->vocab_size);
  auto batch = Batch::Packed(ids, ids, {0, 17, 40});
  ASSERT_TRUE(batch.ok());

  std::vector<float> grads[2];
  double loss[2] = {0, 0};
  cuda::StepProfile profile;
  for (int profiled = 0; profiled < 2; ++profiled) {
    auto made = cuda::CudaModel::Create(*cfg, cpu.params().f32());
    ASSERT_TRUE(made.ok()) << made.status().message();
    cuda::CudaModel& gpu = **made;
    gpu.SetRecompute(1.0 / double(cfg->num_layers));
    if (profiled) gpu.SetProfile(&profile);
    auto info = gpu.ForwardBackward(*batch);
    ASSERT_TRUE(info.ok()) << info.status().message();
    loss[profiled] = info->loss;
    grads[profiled].resize(gpu.layout().total());
    ASSERT_TRUE(gpu.CopyGradsToHost(grads[profiled].data()).ok());
  }
  EXPECT_EQ(loss[1], loss[0]);
  cudatest::ExpectBitEqual(grads[1], grads[0], "gradients with and without the profile");

  EXPECT_EQ(profile.steps(), 1);
  const std::map<std::string, double> t = Totals(profile);
  for (const char* phase : {"embedding",       "weights",          "norm",
                            "qkv_proj",        "qk_norm",          "rope",
                            "attention_fwd",   "o_proj",           "router_and_plan",
                            "moe_permute",     "experts_gemm",     "swiglu",
                            "moe_combine",     "lm_head_and_loss", "recompute",
                            "moe_combine_bwd", "experts_gemm_bwd", "swiglu_bwd",
                            "moe_permute_bwd", "router_bwd",       "norm_bwd",
                            "o_proj_bwd",      "attention_bwd",    "rope_bwd",
                            "qk_norm_bwd",     "qkv_proj_bwd",     "grads_reduce",
                            "embedding_bwd"})
    EXPECT_TRUE(t.count(phase)) << "no phase " << phase;
  EXPECT_FALSE(t.count("expert_all_to_all"));  // one GPU: no expert parallelism
  EXPECT_FALSE(t.count("dense_mlp"));          // every layer is MoE
  for (const auto& [name, ms] : t) EXPECT_TRUE(std::isfinite(ms) && ms >= 0) << name;
}

}  // namespace
}  // namespace xt
