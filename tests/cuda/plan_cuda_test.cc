// `xtuner plan --device cuda` against the CUDA model: the memory pool's high-water mark over one
// ForwardBackward (every stream-ordered allocation: activations, gradients of activations,
// scratch, the bf16 copies of the weights) against PlanCudaStep's figure plus the copies, and
// the engine's LossInfo::activation_bytes against the plan's, on the HF fixtures (Qwen3 dense,
// Qwen3-MoE with q/k norms, Mixtral, DeepSeek-V3's latent attention and shared experts) and
// variants that move the step's peak (a dense layer and tied embeddings, wide experts, more query
// heads), in fp32 and bf16, with no, half and every layer recomputed. Skipped (label `cuda`)
// without a GPU; the CUDA emulator counts every allocation exactly.
#include <cuda_runtime.h>

#include <memory>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "util/testing.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/model/lora.h"
#include "xtuner/model/params.h"
#include "xtuner/plan/cuda_step.h"

namespace xt {
namespace {

class PlanCuda : public cudatest::CudaTest<const char*> {};

// The pool's used-memory high-water mark since the last reset (bytes).
uint64_t PoolHigh(bool reset) {
  int device = 0;
  cudaMemPool_t pool = nullptr;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetDefaultMemPool(&pool, device), cudaSuccess);
  uint64_t high = 0;
  if (reset) {
    EXPECT_EQ(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high), cudaSuccess);
    return 0;
  }
  EXPECT_EQ(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemHigh, &high), cudaSuccess);
  return high;
}

uint64_t PoolInUse() {
  int device = 0;
  cudaMemPool_t pool = nullptr;
  EXPECT_EQ(cudaGetDevice(&device), cudaSuccess);
  EXPECT_EQ(cudaDeviceGetDefaultMemPool(&pool, device), cudaSuccess);
  uint64_t used = 0;
  EXPECT_EQ(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrUsedMemCurrent, &used), cudaSuccess);
  return used;
}

TEST_P(PlanCuda, StepPeakAndActivationsAreThePlans) {
  const std::string fixture = GetParam();
  auto loaded = ModelConfig::Load(testing::DataPath(fixture));
  ASSERT_TRUE(loaded.ok()) << loaded.status().message();
  // Variants that move the peak to other moments of the step: a dense layer among the MoE ones
  // with tied embeddings; wide experts (the SwiGLU gradients outgrow the rows'); four times the
  // query heads (attention's buffers and scratch outgrow the rest).
  std::vector<std::pair<std::string, ModelConfig>> configs = {{"", *loaded}};
  if (loaded->is_moe()) {
    ModelConfig mixed = *loaded;
    mixed.tie_word_embeddings = true;
    if (mixed.intermediate_size == 0) mixed.intermediate_size = 2 * mixed.moe_intermediate_size;
    mixed.layer_is_moe[0] = false;
    configs.push_back({" mixed", mixed});
    ModelConfig wide = *loaded;
    wide.moe_intermediate_size = 4 * wide.hidden_size;
    configs.push_back({" wide experts", wide});
  }
  ModelConfig heads = *loaded;
  heads.num_heads *= 4;
  configs.push_back({" 4x heads", heads});
  if (loaded->mla) {
    // Latent buffers large enough that missing one would show, with a head dim the bf16
    // attention kernels could take (latent attention must stay on the fp32 ones); q_proj in
    // place of the low-rank q path.
    ModelConfig latent = *loaded;
    latent.q_lora_rank *= 8;
    latent.kv_lora_rank *= 8;
    latent.qk_nope_head_dim = 16 - latent.qk_rope_head_dim;
    latent.head_dim = 16;
    configs.push_back({" 8x latent, head dim 16", latent});
    ModelConfig plain_q = *loaded;
    plain_q.q_lora_rank = 0;
    configs.push_back({" plain q", plain_q});
  }
  {  // LoRA adapters (rank 8) on every linear layer LoRA takes ("auto"): their transient scratch
    LoraSpec spec;
    spec.rank = 8;
    spec.alpha = 16;
    spec.targets = {"auto"};
    auto lora = ResolveLora(spec, *loaded, "lora");
    ASSERT_TRUE(lora.ok()) << lora.status().message();
    ModelConfig adapted = *loaded;
    adapted.lora = *lora;
    configs.push_back({" LoRA", adapted});
    adapted.lora.dropout = 0.1;  // each adapter's input masked first (the batch has keys)
    configs.push_back({" LoRA dropout", adapted});
    if (loaded->is_moe()) {  // and on the routed experts
      spec.expert_targets = {"gate_up_proj", "down_proj"};
      auto experts = ResolveLora(spec, *loaded, "lora");
      ASSERT_TRUE(experts.ok()) << experts.status().message();
      adapted.lora = *experts;
      configs.push_back({" LoRA experts", adapted});
    }
  }
  // One packed row of three documents, long enough that the buffers that grow with it dominate.
  const int64_t T = 383;  // odd: no buffer a multiple of the allocators' 256 bytes
  std::vector<int64_t> ids(T);
  for (int64_t t = 0; t < T; ++t) ids[t] = (t * 29 + 3) % loaded->vocab_size;
  Batch batch = Batch::Packed(ids, ids, {0, 100, 300, T}).value();
  Batch::AppendNoise(5, T, &batch.noise);  // drawn from only where the config has dropout
  for (const auto& [variant, cfg] : configs) {
    for (bool bf16 : {false, true}) {
      // Half the layers recomputed (kept and recomputed layers side by side) on the fixture only.
      const std::vector<double> fractions =
          variant.empty() ? std::vector<double>{0.0, 0.5, 1.0} : std::vector<double>{0.0, 1.0};
      for (double recompute : fractions) {
        const std::string what = fixture + variant + (bf16 ? " bf16" : " fp32") + " recompute " +
                                 std::to_string(recompute);
        SCOPED_TRACE(what);
        const uint64_t before = PoolInUse();
        auto made = cuda::CudaModel::Create(cfg, nullptr);
        ASSERT_TRUE(made.ok()) << made.status().message();
        cuda::CudaModel& gpu = **made;
        gpu.SetPrecision(bf16 ? cuda::GemmInput::kBf16 : cuda::GemmInput::kF32);
        gpu.SetRecompute(recompute);
        PoolHigh(/*reset=*/true);
        auto info = gpu.ForwardBackward(batch);
        ASSERT_TRUE(info.ok()) << info.status().message();
        cudatest::Sync();
        const int64_t measured = int64_t(PoolHigh(false) - before);

        CudaStepInputs in;
        in.model = cfg;
        in.tokens = T;
        in.recompute_layers = gpu.recompute_layers();
        in.bf16 = bf16;
        const CudaStepMemory plan = PlanCudaStep(in);
        // bf16: the copy of every unit whose weights enter matmuls, held on one GPU (the mirror).
        const ParamLayout layout(cfg);
        const int64_t mirror =
            bf16 ? (layout.total() - layout.units()[cfg.tie_word_embeddings ? 0 : 1].begin) * 2 : 0;
        const int64_t planned = plan.peak_bytes + mirror;
        EXPECT_EQ(plan.activation_bytes, info->activation_bytes);
        // Within 0.5%: a missed (T, 16) fp32 buffer would fail; what is left out is the tiny
        // scratch (attention's block lists, the grouped GEMM's tiles) and allocation rounding.
        EXPECT_NEAR(double(planned), double(measured), 0.005 * double(measured))
            << "planned " << planned << " (peak at " << plan.peak_at << "), measured " << measured;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, PlanCuda,
                         ::testing::Values("qwen3_moe_tiny", "mixtral_tiny", "qwen3_dense_tiny",
                                           "deepseek_v3_tiny", "variants/gpt_oss_tiny"));

}  // namespace
}  // namespace xt
