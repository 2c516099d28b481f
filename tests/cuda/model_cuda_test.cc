// The CUDA model against the CPU model (fp32, both): the loss, the balancing loss, the tokens per
// expert and every gradient, on the HF fixtures (Qwen3 dense, Qwen3-MoE, Mixtral) as [2, 16]
// rows and as one packed row of three documents, with the balancing coefficient raised so that
// its gradient matters. Skipped (label `cuda`) where no GPU is present.
#include "xtuner/cuda/model_cuda.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "util/testing.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"

namespace xt {
namespace {

class ModelCuda : public cudatest::CudaTest<const char*> {};

TEST_P(ModelCuda, LossesAndEveryGradientMatchTheCpuModel) {
  const std::string fixture = GetParam();
  auto cfg = ModelConfig::Load(testing::DataPath(fixture));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  if (cfg->is_moe()) cfg->router_aux_loss_coef = 0.5;
  Transformer cpu(*cfg);
  ASSERT_TRUE(LoadHfWeights(&cpu, testing::DataPath(fixture)).ok());
  auto made = cuda::CudaModel::Create(*cfg, cpu.params().f32());
  ASSERT_TRUE(made.ok()) << made.status().message();
  cuda::CudaModel& gpu = **made;

  auto ref = SafetensorsFile::Open(testing::DataPath(fixture + "/reference.safetensors"));
  ASSERT_TRUE(ref.ok());
  auto ids = ref->GetF64("input_ids", {2, 16});
  auto labels = ref->GetF64("labels", {2, 16});
  ASSERT_TRUE(ids.ok() && labels.ok());
  const std::vector<int64_t> id(ids->begin(), ids->end()), lab(labels->begin(), labels->end());
  std::vector<Batch> batches;
  batches.push_back(Batch::FromRows(id, lab, 2, 16).value());
  batches.push_back(Batch::Packed(id, lab, {0, 5, 21, 32}).value());

  const int64_t n = cpu.layout().total();
  for (const Batch& b : batches) {
    cpu.ZeroGrads();
    auto want = cpu.ForwardBackward(b);
    ASSERT_TRUE(want.ok());
    ASSERT_TRUE(gpu.ZeroGrads().ok());
    auto got = gpu.ForwardBackward(b);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_NEAR(got->ce_loss, want->ce_loss, 1e-5 * want->ce_loss) << fixture;
    EXPECT_NEAR(got->aux_loss, want->aux_loss, 1e-5 * std::abs(want->aux_loss) + 1e-12) << fixture;
    EXPECT_NEAR(got->loss, want->loss, 1e-5 * want->loss) << fixture;
    EXPECT_EQ(got->num_loss_tokens, want->num_loss_tokens);
    EXPECT_EQ(got->tokens_per_expert, want->tokens_per_expert) << fixture;
    std::vector<float> g(n);
    ASSERT_TRUE(gpu.CopyGradsToHost(g.data()).ok());
    // Other summation orders everywhere (cuBLAS, the attention tiles, the exponentials): fp32
    // round-off, amplified a little by the backward.
    EXPECT_LT(testing::RelError(g.data(), cpu.grads().f32(), n), 1e-4) << fixture;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, ModelCuda,
                         ::testing::Values("qwen3_dense_tiny", "qwen3_moe_tiny", "mixtral_tiny"));

}  // namespace
}  // namespace xt
