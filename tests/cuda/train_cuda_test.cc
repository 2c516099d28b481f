// train.device = "cuda" end to end (cuda/train_backend_cuda.h): the tiny trainer job of
// tests/util/tiny_run.h on the GPU against the same job on the CPU (losses, balancing losses,
// gradient norms, the checkpointed parameters; DeepSeek-V3's with its bias updates too), resume on
// the GPU, bf16 matmuls, and the router statistics pass against the CPU model's. Skipped where no
// GPU is usable.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/cuda/sparse_slab.h"
#include "xtuner/cuda/train_backend_cuda.h"
#include "xtuner/model/params.h"
#include "xtuner/plan/frozen_bf16.h"
#include "xtuner/train/train_checkpoint.h"
#include "xtuner/train/trainer.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::Metric;
using testing::TinyRun;

class TrainCuda : public cudatest::CudaTest<int> {
 protected:
  void SetUp() override {
    cudatest::CudaTest<int>::SetUp();
    cuda::RegisterCudaTrainBackend();
  }
};

void ExpectClose(const std::vector<double>& got, const std::vector<double>& want, double rel,
                 const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], rel * std::abs(want[i]) + 1e-12) << what << " step " << i + 1;
}

// Runs `cpu` and its twin on the GPU (in cpu's work dir + "-gpu"), fp32 on both sides: cuBLAS
// and the CPU's oneDNN sum in other orders, so the runs agree to float rounding, compounded over
// 6 AdamW steps (losses, balancing losses where the model has one, gradient norms, the last
// checkpoint's parameters, a LoRA run's base and adapters). Returns the GPU run's config.
TrainConfig ExpectAGpuRunFollows(const TrainConfig& cpu, bool aux_loss = true) {
  TrainConfig gpu = cpu;
  gpu.work_dir = cpu.work_dir + "-gpu";
  gpu.device = "cuda";
  EXPECT_TRUE(RunTraining(cpu, nullptr).ok());
  auto r = RunTraining(gpu, nullptr);
  EXPECT_TRUE(r.ok()) << r.status().message();
  ExpectClose(Metric(gpu.work_dir, "loss"), Metric(cpu.work_dir, "loss"), 1e-4, "loss");
  if (aux_loss)
    ExpectClose(Metric(gpu.work_dir, "aux_loss"), Metric(cpu.work_dir, "aux_loss"), 1e-4, "aux");
  ExpectClose(Metric(gpu.work_dir, "grad_norm"), Metric(cpu.work_dir, "grad_norm"), 1e-3,
              "grad_norm");
  const std::string step6 = "/checkpoints/step-00000006";
  auto mc = ModelConfig::Load(cpu.work_dir + step6 + "/config.json");
  auto lora = ReadCheckpointLora(cpu.work_dir + step6);
  EXPECT_TRUE(mc.ok() && lora.ok());
  if (!mc.ok() || !lora.ok()) return gpu;
  mc->lora = *lora;
  auto pa = ReadCheckpointParams(cpu.work_dir + step6, *mc);
  auto pb = ReadCheckpointParams(gpu.work_dir + step6, *mc);
  EXPECT_TRUE(pa.ok() && pb.ok());
  if (pa.ok() && pb.ok()) {
    EXPECT_LT(testing::RelError(pb->data(), pa->data(), int64_t(pa->size())), 1e-4);
  }
  return gpu;
}

// `straight` (checkpointed every 3 steps, 6 steps run) resumed from its step-3 checkpoint in a
// work dir of its own: the same last 3 losses, bit for bit. Returns the resumed run's config.
TrainConfig ExpectAResumedRunRepeatsIt(const TrainConfig& straight) {
  TrainConfig resumed = testing::ResumedRun(straight, 3);
  resumed.export_at_end = false;
  auto r = RunTraining(resumed, nullptr);
  EXPECT_TRUE(r.ok()) << r.status().message();
  const std::vector<double> a = Metric(straight.work_dir, "loss");
  const std::vector<double> b = Metric(resumed.work_dir, "loss");
  EXPECT_EQ(a.size(), 6u);
  EXPECT_EQ(b.size(), 3u);
  for (size_t i = 0; i < 3 && a.size() == 6 && b.size() == 3; ++i)
    EXPECT_EQ(a[3 + i], b[i]) << "step " << 4 + i;
  return resumed;
}

// The largest relative difference of two runs' losses, step by step (over the shorter).
double MostRelativeDifference(const std::vector<double>& a, const std::vector<double>& b) {
  double most = 0;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i)
    most = std::max(most, std::abs(a[i] - b[i]) / b[i]);
  return most;
}

TEST_P(TrainCuda, AGpuRunFollowsTheCpuRun) {
  const int micro = GetParam();  // 2: the router pre-pass; 4: pooled between fwd and bwd
  TrainConfig cpu = TinyRun("gpu_cpu" + std::to_string(micro));
  cpu.micro_batch_size = micro;
  cpu.recompute = 0.5;
  ExpectAGpuRunFollows(cpu);
}

INSTANTIATE_TEST_SUITE_P(MicroBatch, TrainCuda, ::testing::Values(2, 4));

class TrainCudaOnce : public TrainCuda {};  // the cases below with micro-batches of 2
INSTANTIATE_TEST_SUITE_P(MicroBatch, TrainCudaOnce, ::testing::Values(2));

// DeepSeek-V3 on the GPU (latent attention, the sigmoid router, a shared expert, a dense first
// layer) follows its CPU run, and after each step every correction bias moves on the device by
// the speed towards the balance of that step's counts (metrics.jsonl's tokens_per_expert).
TEST_P(TrainCudaOnce, ADeepseekV3GpuRunFollowsTheCpuRunAndMovesItsBiases) {
  TrainConfig cpu = TinyRun("gpu_ds_cpu");
  std::ofstream(cpu.model_config) << testing::TinyDeepseekV3Config();
  cpu.router_bias_update_speed = 0.01;
  const TrainConfig gpu = ExpectAGpuRunFollows(cpu, /*aux_loss=*/false);  // balanced by its bias
  if (HasFailure()) return;
  auto mc = ModelConfig::Load(cpu.model_config);
  ASSERT_TRUE(mc.ok());
  auto pb = ReadCheckpointParams(gpu.work_dir + "/checkpoints/step-00000006", *mc);
  ASSERT_TRUE(pb.ok());
  // The GPU run's bias: the sum of its steps' deltas.
  int steps = 0;
  const std::vector<float> want = testing::BiasFromMetrics(gpu.work_dir, 0.01, &steps);
  ASSERT_EQ(steps, 6);
  ASSERT_EQ(int64_t(want.size()), mc->num_experts);
  const ParamInfo* bias = ParamLayout(*mc).Find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_TRUE(bias);
  bool moved = false;
  for (int64_t e = 0; e < mc->num_experts; ++e) {
    EXPECT_NEAR((*pb)[bias->offset + e], want[e], 1e-6) << "expert " << e;
    moved |= want[e] != 0.0f;
  }
  EXPECT_TRUE(moved) << "the counts were balanced at every step: the test shows nothing";
}

// GPT-OSS on the GPU (sinks, a sliding window, biases, the clamped GLU, its balancing loss)
// follows its CPU run.
TEST_P(TrainCudaOnce, AGptOssGpuRunFollowsTheCpuRun) {
  TrainConfig cpu = TinyRun("gpu_gpt_oss_cpu");
  std::ofstream(cpu.model_config) << testing::TinyGptOssConfig();
  ExpectAGpuRunFollows(cpu);
}

// A LoRA run's step-6 parameters (its base's and its adapters'), after checking that its base
// weights are exactly as loaded (LoraBaseModel's) and that it has its 16 adapters. *mc: the
// run's model config.
std::vector<float> LoraParamsWithTheBaseUnmoved(const std::string& work_dir, ModelConfig* mc) {
  const std::string step6 = work_dir + "/checkpoints/step-00000006";
  auto loaded = ModelConfig::Load(step6 + "/config.json");
  auto lora = ReadCheckpointLora(step6);
  EXPECT_TRUE(loaded.ok() && lora.ok());
  if (!loaded.ok() || !lora.ok()) return {};
  *mc = *loaded;
  mc->lora = *lora;
  auto params = ReadCheckpointParams(step6, *mc);
  ModelConfig base_cfg = *mc;
  base_cfg.lora = LoraSpec();
  auto base =
      ReadCheckpointParams(testing::LoraBaseModel() + "/../checkpoints/step-00000002", base_cfg);
  EXPECT_TRUE(params.ok() && base.ok());
  if (!params.ok() || !base.ok()) return {};
  const ParamLayout layout(*mc), base_layout(base_cfg);
  int adapters = 0;
  for (const ParamInfo& p : layout.params()) {
    if (p.lora) {
      ++adapters;
      continue;
    }
    const int64_t n = NumElements(p.shape);
    const ParamInfo* q = base_layout.Find(p.name);
    EXPECT_TRUE(q) << p.name;
    if (!q) continue;
    EXPECT_TRUE(std::equal(params->begin() + p.offset, params->begin() + p.offset + n,
                           base->begin() + q->offset))
        << work_dir << ": " << p.name << " moved";
  }
  EXPECT_EQ(adapters, 2 * 4 * 2);
  return std::move(*params);
}

// A LoRA run on the GPU (the attention's adapters of a base model, dropout 0.1: the CPU's masks)
// follows its CPU run: losses, gradient norms and the adapters it checkpoints, while the base
// weights stay exactly as loaded; it exports the merged model and its PEFT adapter. Resumed from
// its step-3 checkpoint (the adapters' moments, held apart on the GPU, go through the host), it
// repeats itself exactly.
TEST_P(TrainCudaOnce, ALoraGpuRunFollowsTheCpuRunAndResumesExactly) {
  TrainConfig cpu = testing::LoraRun("gpu_lora_cpu");
  cpu.lora_dropout = 0.1;
  cpu.checkpoint_every = 3;
  cpu.export_at_end = true;
  const TrainConfig gpu = ExpectAGpuRunFollows(cpu);
  ASSERT_FALSE(HasFailure());
  ModelConfig mc;
  const std::vector<float> pa = LoraParamsWithTheBaseUnmoved(cpu.work_dir, &mc);
  const std::vector<float> pb = LoraParamsWithTheBaseUnmoved(gpu.work_dir, &mc);
  ASSERT_EQ(pa.size(), pb.size());
  ASSERT_FALSE(HasFailure());
  const ParamLayout layout(mc);
  for (const ParamInfo& p : layout.params()) {
    if (p.lora) {
      EXPECT_LT(testing::RelError(pb.data() + p.offset, pa.data() + p.offset, NumElements(p.shape)),
                1e-4)
          << p.name;
    }
  }
  EXPECT_TRUE(fs::exists(gpu.work_dir + "/hf/model.safetensors"));
  EXPECT_TRUE(fs::exists(gpu.work_dir + "/hf-adapter/adapter_model.safetensors"));

  const TrainConfig resumed = ExpectAResumedRunRepeatsIt(gpu);
  ASSERT_FALSE(HasFailure());
  EXPECT_EQ(LoraParamsWithTheBaseUnmoved(resumed.work_dir, &mc), pb);
}

// A LoRA run in bf16 on the GPU (the adapters' products and attention on the tensor cores, the
// weights' bf16 copies written by the update) follows the CPU's bf16 LoRA run, differs from the
// GPU's fp32 one, and leaves the base weights exactly as loaded. Its frozen matmul weights are
// held in bf16 only (train.cuda_frozen_weights = "auto"): the run is the one that holds their
// fp32 copy too ("fp32"), bit for bit, in less device memory by that copy.
TEST_P(TrainCudaOnce, ALoraBf16GpuRunFollowsTheCpusBf16Run) {
  TrainConfig cpu16 = testing::LoraRun("gpu_lora_cpu16");
  cpu16.precision = "bf16";
  TrainConfig gpu16 = cpu16;
  gpu16.work_dir = cpu16.work_dir + "-gpu";
  gpu16.device = "cuda";
  TrainConfig gpu32 = gpu16;
  gpu32.work_dir = cpu16.work_dir + "-gpu32";
  gpu32.precision = "fp32";
  TrainConfig held = gpu16;
  held.work_dir = cpu16.work_dir + "-gpu16-fp32-held";
  held.cuda_frozen_weights = "fp32";
  std::string summary;  // gpu16's run summary: its device line says what it holds
  for (const TrainConfig* c : {&cpu16, &gpu16, &gpu32, &held}) {
    char* buf = nullptr;
    size_t size = 0;
    std::FILE* log = open_memstream(&buf, &size);
    auto r = RunTraining(*c, log);
    std::fclose(log);
    if (c == &gpu16) summary.assign(buf, size);
    std::free(buf);
    ASSERT_TRUE(r.ok()) << r.status().message();
  }
  EXPECT_NE(summary.find("LoRA's frozen matmul weights in bf16 only"), std::string::npos)
      << summary;
  const std::vector<double> b16 = Metric(gpu16.work_dir, "loss");
  ExpectClose(b16, Metric(cpu16.work_dir, "loss"), 5e-3, "against the CPU's bf16");
  EXPECT_GT(MostRelativeDifference(b16, Metric(gpu32.work_dir, "loss")), 1e-6)
      << "the GPU's bf16 LoRA run gave its fp32 losses: was bf16 used?";
  ModelConfig mc;
  const std::vector<float> params = LoraParamsWithTheBaseUnmoved(gpu16.work_dir, &mc);
  EXPECT_EQ(b16, Metric(held.work_dir, "loss"));
  EXPECT_EQ(Metric(gpu16.work_dir, "grad_norm"), Metric(held.work_dir, "grad_norm"));
  EXPECT_EQ(params, LoraParamsWithTheBaseUnmoved(held.work_dir, &mc));
#ifdef XTUNER_CUDA_EMU
  // Device memory, as the emulator counts it exactly: the fp32 parameters' allocation against the
  // granules (pages) that hold what is not in bf16 only. (A GPU's pool reserves in larger steps,
  // and its 2 MiB granules hold all of a tiny model.)
  const int64_t n = ParamLayout(mc).total();
  auto granule = cuda::SparseSlab::Granularity();
  ASSERT_TRUE(granule.ok());
  const int64_t unheld =
      (4 * n + 255) / 256 * 256 -
      MappedBytes(GranuleMappings(n, Fp32Ranges(n, Bf16OnlyRanges(ParamLayout(mc))), *granule));
  const std::vector<double> peak = Metric(gpu16.work_dir, "peak_memory_bytes");
  const std::vector<double> peak_held = Metric(held.work_dir, "peak_memory_bytes");
  ASSERT_FALSE(peak.empty());
  ASSERT_EQ(peak.size(), peak_held.size());
  EXPECT_GT(unheld, 0) << "no fp32 parameter left out";  // (the tiny model: mostly embedding)
  EXPECT_EQ(peak_held.back() - peak.back(), double(unheld));
#endif
}

// The GPU's kernels use no atomics, so a resumed GPU run repeats the uninterrupted one.
TEST_P(TrainCudaOnce, AGpuRunResumesExactly) {
  TrainConfig straight = TinyRun("gpu_straight");
  straight.device = "cuda";
  straight.checkpoint_every = 3;
  ASSERT_TRUE(RunTraining(straight, nullptr).ok());
  ExpectAResumedRunRepeatsIt(straight);
}

// bf16 matmuls on the GPU follow the CPU's bf16 run and the fp32 run as the CPU's bf16 mode does
// (trainer_test), and are really in use (the GPU's fp32 run differs).
TEST_P(TrainCudaOnce, Bf16FollowsTheFp32Run) {
  TrainConfig cpu16 = TinyRun("gpu_cpu16");
  cpu16.precision = "bf16";
  TrainConfig gpu32 = TinyRun("gpu_fp32");
  gpu32.device = "cuda";
  TrainConfig gpu16 = TinyRun("gpu_bf16");
  gpu16.device = "cuda";
  gpu16.precision = "bf16";
  for (const TrainConfig* c : {&cpu16, &gpu32, &gpu16}) {
    auto r = RunTraining(*c, nullptr);
    ASSERT_TRUE(r.ok()) << r.status().message();
  }
  const std::vector<double> b16 = Metric(gpu16.work_dir, "loss");
  const std::vector<double> f32 = Metric(gpu32.work_dir, "loss");
  // (The GPU's bf16 mode rounds attention's operands too, the CPU's does not.)
  ExpectClose(b16, Metric(cpu16.work_dir, "loss"), 5e-3, "against the CPU's bf16");
  ExpectClose(b16, f32, 5e-3, "against fp32");
  EXPECT_GT(MostRelativeDifference(b16, f32), 1e-6)
      << "the GPU's bf16 run gave its fp32 losses: was bf16 used?";

  // The kernel choices of the config: the mma attention and xtuner's grouped GEMM give the same
  // run to bf16 rounding; a choice the precision cannot take stops the run before any work.
  TrainConfig picked = TinyRun("gpu_bf16_picked");
  picked.device = "cuda";
  picked.precision = "bf16";
  picked.cuda_attention = "mma";
  picked.cuda_experts_gemm = "xtuner-grouped";
  auto r = RunTraining(picked, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  ExpectClose(Metric(picked.work_dir, "loss"), b16, 2e-3, "mma attention, xtuner-grouped");
  TrainConfig wrong = TinyRun("gpu_fp32_xtuner");
  wrong.device = "cuda";
  wrong.cuda_experts_gemm = "xtuner-grouped";
  auto refused = RunTraining(wrong, nullptr);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("train.cuda_experts_gemm"), std::string::npos)
      << refused.status().message();
}

}  // namespace
}  // namespace xt
