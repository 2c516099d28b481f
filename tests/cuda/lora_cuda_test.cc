// LoRA on the GPU (cuda/lora_terms.h): the CUDA model with adapters against the CPU model with
// the same adapters, on the HF fixtures with random A and B (PEFT's zero B would leave A's
// gradient zero): losses, every adapter's gradient, and no gradient at all for the frozen
// weights, in fp32 (every layer recomputed too) and in bf16 (against the CPU's bf16 mode). The
// targets cover a dense MLP's fused gate_up (two adapters on one weight), GQA with q/k norms,
// GPT-OSS's biased projections with sinks and a window, and latent attention's five
// projections or its plain q_proj; with LoRA's dropout, the CPU's masks. The frozen matmul
// weights held in bf16 only (a LoRA run on one GPU) give the same bf16 steps. And the column op
// and the dropout masks the adapters use, against their CPU twins.
// Skipped (label `cuda`) where no GPU is present.
#include <gtest/gtest.h>

#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda/cuda_test_util.h"
#include "util/fixture_files.h"
#include "util/testing.h"
#include "xtuner/cuda/model_cuda.h"
#include "xtuner/cuda/ops_cuda.h"
#include "xtuner/cuda/shard_memory_cuda.h"
#include "xtuner/cuda/sparse_slab.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"
#include "xtuner/ops/dropout_mask.h"
#include "xtuner/ops/ops.h"
#include "xtuner/plan/frozen_bf16.h"

namespace xt {
namespace {

// ops::scale_columns' GPU twin, bit for bit, from fp32 and from bf16 inputs: assigned or added,
// strided rows, offsets that leave the other columns alone, a scale that rounds.
class ScaleColumnsCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t, bool>> {};

TEST_P(ScaleColumnsCuda, BitIdenticalToTheCpu) {
  const auto [N, width, add] = GetParam();
  const int64_t out_stride = width + 7, out_at = 3, in_stride = width + 2, in_at = 1;
  const float scale = 0.7f;
  std::vector<float> in = cudatest::RandomNormal(size_t(N * in_stride), 1);
  const std::vector<float> out0 = cudatest::RandomNormal(size_t(N * out_stride), 2);
  std::vector<float> want = out0;
  ops::scale_columns(want.data(), out_stride, out_at, in.data(), in_stride, in_at, N, width, scale,
                     add);
  cudatest::DeviceVec<float> gin(in), gout(out0);
  ASSERT_TRUE(
      cuda::ScaleColumns(gout.p, out_stride, out_at, gin.p, in_stride, in_at, N, width, scale, add)
          .ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout.Host(), want, "scale_columns");
  // From bf16: the input's bf16 bits, read exactly as the fp32 values they stand for.
  std::vector<uint16_t> in16(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    in16[i] = F32ToBf16(in[i]);
    in[i] = Bf16ToF32(in16[i]);
  }
  want = out0;
  ops::scale_columns(want.data(), out_stride, out_at, in.data(), in_stride, in_at, N, width, scale,
                     add);
  cudatest::DeviceVec<uint16_t> gin16(in16);
  cudatest::DeviceVec<float> gout16(out0);
  ASSERT_TRUE(cuda::ScaleColumns(gout16.p, out_stride, out_at, gin16.p, in_stride, in_at, N, width,
                                 scale, add)
                  .ok());
  cudatest::Sync();
  cudatest::ExpectBitEqual(gout16.Host(), want, "scale_columns from bf16");
}

INSTANTIATE_TEST_SUITE_P(Shapes, ScaleColumnsCuda,
                         ::testing::Values(std::make_tuple(int64_t(1), int64_t(1), true),
                                           std::make_tuple(int64_t(37), int64_t(5), false),
                                           std::make_tuple(int64_t(300), int64_t(130), true),
                                           std::make_tuple(int64_t(0), int64_t(8), true)));

// LoRA's dropout masks on the GPU (cuda::DropoutMask) against ops::dropout_mask, bit for bit: fp32
// assigned and added, bf16 assigned (the CPU masking the same values), on rows of awkward widths.
class DropoutMaskCuda : public cudatest::CudaTest<std::tuple<int64_t, int64_t>> {};

TEST_P(DropoutMaskCuda, BitIdenticalToTheCpu) {
  const auto [T, C] = GetParam();
  std::vector<uint64_t> keys;
  Batch::AppendNoise(42, T, &keys);
  const std::vector<float> in = cudatest::RandomNormal(size_t(T * C), 3);
  const std::vector<float> out0 = cudatest::RandomNormal(size_t(T * C), 4);
  cudatest::DeviceVec<uint64_t> gkeys(keys);
  cudatest::DeviceVec<float> gin(in);
  for (double p : {0.0, 0.1, 0.5}) {
    const uint32_t threshold = ops::dropout_threshold(p);
    for (bool add : {false, true}) {
      std::vector<float> want = out0;
      ops::dropout_mask(want.data(), in.data(), T, C, keys.data(), 7, threshold, add);
      cudatest::DeviceVec<float> gout(out0);
      ASSERT_TRUE(cuda::DropoutMask(gout.p, gin.p, T, C, gkeys.p, 7, threshold, add).ok());
      cudatest::Sync();
      cudatest::ExpectBitEqual(gout.Host(), want, ("dropout_mask p " + std::to_string(p)).c_str());
    }
    // bf16: the same mask over the bf16 values.
    std::vector<uint16_t> in16(in.size());
    std::vector<float> rounded(in.size()), want(in.size());
    for (size_t i = 0; i < in.size(); ++i) rounded[i] = Bf16ToF32(in16[i] = F32ToBf16(in[i]));
    ops::dropout_mask(want.data(), rounded.data(), T, C, keys.data(), 7, threshold, false);
    cudatest::DeviceVec<uint16_t> gin16(in16), gout16(std::vector<uint16_t>(in.size(), 1));
    ASSERT_TRUE(cuda::DropoutMask(gout16.p, gin16.p, T, C, gkeys.p, 7, threshold).ok());
    cudatest::Sync();
    std::vector<float> got(in.size());
    const std::vector<uint16_t> got16 = gout16.Host();
    for (size_t i = 0; i < in.size(); ++i) got[i] = Bf16ToF32(got16[i]);
    cudatest::ExpectBitEqual(got, want, ("dropout_mask bf16 p " + std::to_string(p)).c_str());
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, DropoutMaskCuda,
                         ::testing::Values(std::make_tuple(int64_t(1), int64_t(1)),
                                           std::make_tuple(int64_t(37), int64_t(129)),
                                           std::make_tuple(int64_t(300), int64_t(64)),
                                           std::make_tuple(int64_t(0), int64_t(8))));

// A fixture's model with adapters on `targets` (rank 4, alpha: scale alpha / 4, or alpha / 2 with
// rslora; LoRA's dropout `dropout`), its HF weights, and its adapters random (A and B both, so
// that every adapter gradient is non-zero); the CPU model and its GPU twin with the same
// parameters, and the fixture's batch (with noise keys under dropout).
struct LoraModels {
  ModelConfig cfg;
  std::unique_ptr<Transformer> cpu;
  std::unique_ptr<cuda::CudaModel> gpu;
  std::vector<Batch> batches;
};

void MakeLoraModels(const std::string& fixture, const std::string& targets, double alpha,
                    bool rslora, LoraModels* m, double dropout = 0,
                    const std::string& expert_targets = "") {
  auto cfg = ModelConfig::Load(testing::DataPath(fixture));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  LoraSpec spec;
  spec.rank = 4;
  spec.alpha = alpha;
  spec.rslora = rslora;
  spec.dropout = dropout;
  spec.targets = SplitLoraTargets(targets);
  spec.expert_targets = SplitLoraTargets(expert_targets);
  auto resolved = ResolveLora(spec, *cfg, "lora");
  ASSERT_TRUE(resolved.ok()) << resolved.status().message();
  m->cfg = *cfg;
  m->cfg.lora = *resolved;
  m->cpu = std::make_unique<Transformer>(m->cfg);
  ASSERT_TRUE(LoadHfWeights(m->cpu.get(), testing::DataPath(fixture)).ok());
  std::mt19937 rng(11);
  std::normal_distribution<float> d(0.0f, 0.05f);
  float* slab = m->cpu->params().f32();
  int adapters = 0;
  for (const ParamInfo& p : m->cpu->layout().params()) {
    if (!p.lora) continue;
    ++adapters;
    for (int64_t i = 0; i < NumElements(p.shape); ++i) slab[p.offset + i] = d(rng);
  }
  ASSERT_GT(adapters, 0) << fixture << ": no adapter on " << targets;
  auto made = cuda::CudaModel::Create(m->cfg, slab);
  ASSERT_TRUE(made.ok()) << made.status().message();
  m->gpu = std::move(*made);
  std::vector<int64_t> id, label;
  testing::ReferenceBatch(fixture, &id, &label);
  if (::testing::Test::HasFatalFailure()) return;
  m->batches.push_back(Batch::FromRows(id, label, 2, 16).value());
  m->batches.push_back(Batch::Packed(id, label, {0, 5, 21, 32}).value());
  for (Batch& b : m->batches)
    if (dropout > 0) Batch::AppendNoise(uint64_t(b.num_docs()), b.num_tokens(), &b.noise);
}

// Every frozen weight's gradient is exactly zero, every adapter's is not.
void ExpectOnlyAdaptersHaveGradients(const ParamLayout& layout, const float* g,
                                     const std::string& what) {
  for (const ParamInfo& p : layout.params()) {
    double sq = 0;
    for (int64_t i = 0; i < NumElements(p.shape); ++i)
      sq += double(g[p.offset + i]) * g[p.offset + i];
    if (p.lora)
      EXPECT_GT(sq, 0) << what << ": " << p.name << " has no gradient";
    else
      EXPECT_EQ(sq, 0) << what << ": frozen " << p.name << " has a gradient";
  }
}

// fixture, targets, alpha, rslora, dropout, the routed experts' targets (target_parameters);
// scales that round (1.5, 3) and that do not (2, 4).
using Case = std::tuple<const char*, const char*, double, bool, double, const char*>;
class LoraCuda : public cudatest::CudaTest<Case> {};

TEST_P(LoraCuda, LossesAndAdapterGradientsMatchTheCpuModel) {
  const auto [fixture, targets, alpha, rslora, dropout, experts] = GetParam();
  LoraModels m;
  MakeLoraModels(fixture, targets, alpha, rslora, &m, dropout, experts);
  if (HasFatalFailure()) return;
  const int64_t n = m.cpu->layout().total();
  double got0 = 0, want0 = 0;  // the first batch's losses
  for (const Batch& b : m.batches) {
    m.cpu->ZeroGrads();
    auto want = m.cpu->ForwardBackward(b);
    ASSERT_TRUE(want.ok());
    ASSERT_TRUE(m.gpu->ZeroGrads().ok());
    auto got = m.gpu->ForwardBackward(b);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_NEAR(got->loss, want->loss, 1e-5 * want->loss) << fixture;
    EXPECT_EQ(got->tokens_per_expert, want->tokens_per_expert) << fixture;
    if (&b == &m.batches[0]) got0 = got->loss, want0 = want->loss;
    std::vector<float> g(n);
    ASSERT_TRUE(m.gpu->CopyGradsToHost(g.data()).ok());
    cudatest::ExpectSameGradients(m.cpu->layout(), g.data(), m.cpu->grads().f32(), 1e-4, fixture);
    ExpectOnlyAdaptersHaveGradients(m.cpu->layout(), g.data(), fixture);
    if (dropout > 0) {  // the masks are there: they move the loss ten times more than the GPU
      Batch plain = b;  // no keys: nothing dropped
      plain.noise.clear();
      auto undropped = m.gpu->ForwardBackward(plain);
      ASSERT_TRUE(undropped.ok());
      EXPECT_LT(std::abs(got->loss - want->loss), 0.1 * std::abs(undropped->loss - want->loss))
          << fixture << ": the masks move the loss by " << undropped->loss - want->loss;
    }
    // Every layer recomputed in the backward (its adapters' terms with it): the same step.
    m.gpu->SetRecompute(1.0);
    ASSERT_TRUE(m.gpu->ZeroGrads().ok());
    auto again = m.gpu->ForwardBackward(b);
    m.gpu->SetRecompute(0.0);
    ASSERT_TRUE(again.ok()) << again.status().message();
    EXPECT_NEAR(again->loss, got->loss, 1e-6 * got->loss) << fixture << " recompute";
    std::vector<float> g_again(n);
    ASSERT_TRUE(m.gpu->CopyGradsToHost(g_again.data()).ok());
    cudatest::ExpectSameGradients(m.cpu->layout(), g_again.data(), g.data(), 1e-5,
                                  std::string(fixture) + " recompute");
  }
  // The forward's adapter terms are there: the GPU's loss is ten times nearer the CPU's than the
  // adapters move it (B zero: the base model's loss).
  float* slab = m.cpu->params().f32();
  for (const ParamInfo& p : m.cpu->layout().params())
    if (p.lora && p.name.find("lora_B") != std::string::npos)
      std::fill(slab + p.offset, slab + p.offset + NumElements(p.shape), 0.0f);
  auto base = m.cpu->ForwardBackward(m.batches[0]);
  ASSERT_TRUE(base.ok());
  EXPECT_LT(std::abs(got0 - want0), 0.1 * std::abs(want0 - base->loss))
      << fixture << ": the adapters move the loss by " << want0 - base->loss;
}

// bf16 matmuls follow the CPU's bf16 mode with attention on the fp32 kernels (as the CPU's bf16
// mode keeps it); the adapters' products are in bf16 too. With attention on the tensor cores
// too (where the model takes them), the gradients are as near the fp32 ones as the CPU's bf16
// mode's are; where that moves a token to another expert (a near tie in the router: with
// adapters on the experts, the emulator's bf16 attention does so in qwen3_moe_tiny's layer 1),
// the gradients differ by more than rounding, and only the loss is compared.
TEST_P(LoraCuda, Bf16FollowsTheCpuModelsBf16Mode) {
  const auto [fixture, targets, alpha, rslora, dropout, experts] = GetParam();
  LoraModels m;
  MakeLoraModels(fixture, targets, alpha, rslora, &m, dropout, experts);
  if (HasFatalFailure()) return;
  const Batch& b = m.batches[1];
  const int64_t n = m.cpu->layout().total();
  m.cpu->ZeroGrads();
  auto fp32 = m.cpu->ForwardBackward(b);
  ASSERT_TRUE(fp32.ok());
  const std::vector<float> g32(m.cpu->grads().f32(), m.cpu->grads().f32() + n);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kBf16);
  m.cpu->ZeroGrads();
  auto want = m.cpu->ForwardBackward(b);
  ops::SetMatmulPrecision(ops::MatmulPrecision::kFp32);
  ASSERT_TRUE(want.ok());
  const double cpu_bf16_error = testing::RelError(m.cpu->grads().f32(), g32.data(), n);
  m.gpu->SetPrecision(cuda::GemmInput::kBf16);
  for (bool bf16_attention : {false, true}) {
    SCOPED_TRACE(bf16_attention ? "bf16 attention" : "fp32 attention");
    m.gpu->SetBf16Attention(bf16_attention);
    ASSERT_TRUE(m.gpu->ZeroGrads().ok());
    auto got = m.gpu->ForwardBackward(b);
    ASSERT_TRUE(got.ok()) << got.status().message();
    std::vector<float> g(n);
    ASSERT_TRUE(m.gpu->CopyGradsToHost(g.data()).ok());
    ExpectOnlyAdaptersHaveGradients(m.cpu->layout(), g.data(), std::string(fixture) + " bf16");
    if (!bf16_attention) {
      EXPECT_NEAR(got->loss, want->loss, 1e-4 * want->loss) << fixture;
      cudatest::ExpectSameGradients(m.cpu->layout(), g.data(), m.cpu->grads().f32(), 2e-2,
                                    std::string(fixture) + " bf16");
    } else if (got->tokens_per_expert != fp32->tokens_per_expert) {
      EXPECT_NEAR(got->loss, fp32->loss, 1e-2 * fp32->loss) << fixture << ": a token rerouted";
    } else {
      EXPECT_LE(testing::RelError(g.data(), g32.data(), n), 1.5 * cpu_bf16_error + 1e-3)
          << fixture << ": the CPU's bf16 mode is " << cpu_bf16_error << " from fp32";
    }
  }
}

// A LoRA run on one GPU holds its frozen matmul weights in bf16 only (plan/frozen_bf16.h): the
// model over a one-rank ShardedParams whose fp32 parameters hold memory only outside them (their
// addresses map nothing: in the emulator a read there faults) takes the same bf16 steps as over
// its own fp32 slab, bit for bit (loss, every adapter's gradient), before and after the
// adapters change (the other weights' bf16 copies made again around the ones held in bf16 only),
// and though an optimizer said it wrote the copy before the first pass.
TEST_P(LoraCuda, FrozenWeightsHeldInBf16OnlyGiveTheSameBf16Steps) {
  const auto [fixture, targets, alpha, rslora, dropout, experts] = GetParam();
  LoraModels m;
  MakeLoraModels(fixture, targets, alpha, rslora, &m, dropout, experts);
  if (HasFatalFailure()) return;
  const ParamLayout& layout = m.cpu->layout();
  const int64_t n = layout.total();
  float* host = m.cpu->params().f32();
  const SlabRanges bf16_only = Bf16OnlyRanges(layout);
  ASSERT_GT(MappedBytes(bf16_only), n / 2) << fixture;  // the projections and experts, at least
  const SlabRanges held = Fp32Ranges(n, bf16_only);
  std::unique_ptr<Comm> world = MakeSingleComm();
  std::unique_ptr<ShardMemory> memory = cuda::MakeDeviceShardMemory(nullptr);
  ShardedParams shard(m.cfg, Mesh{}, world.get(), world.get(), memory.get(), bf16_only);
  EXPECT_EQ(shard.fp32_ranges(), held);  // (one rank: the shard is the slab)
  EXPECT_EQ(shard.bf16_ranges(), bf16_only);
  EXPECT_EQ(shard.params16(), nullptr);  // (the model holds their copy)
  auto granule = cuda::SparseSlab::Granularity();
  ASSERT_TRUE(granule.ok()) << granule.status().message();
  EXPECT_EQ(memory->held_bytes(), MappedBytes(GranuleMappings(n, held, *granule)));
#ifdef XTUNER_CUDA_EMU  // its granules (pages) are small enough to leave a tiny model's out
  EXPECT_LT(memory->held_bytes(), 2 * n) << fixture << ": most of the slab is held";
#endif
  for (const auto& [at, k] : held)
    ASSERT_EQ(cudaMemcpy(shard.params() + at, host + at, size_t(k) * 4, cudaMemcpyHostToDevice),
              cudaSuccess);
  auto over = cuda::CudaModel::CreateOver(m.cfg, &shard, nullptr);
  ASSERT_TRUE(over.ok()) << over.status().message();
  cuda::CudaModel& gpu = **over;
  m.gpu->SetPrecision(cuda::GemmInput::kBf16);
  gpu.SetPrecision(cuda::GemmInput::kBf16);
  ASSERT_TRUE(gpu.HoldInBf16Only(bf16_only, host).ok());
  // An optimizer's word that it wrote the copy, before any pass made the rest of it: the parts
  // not held in bf16 only are still made at their first use.
  gpu.ParamsChanged(/*mirror_written=*/true);
  for (int step = 0; step < 2; ++step) {
    SCOPED_TRACE(step == 0 ? "first step" : "after the adapters changed");
    if (step == 1) {  // every adapter moved, on both sides, and their bf16 copies stale
      for (const auto& [at, k] : shard.trainable_ranges())
        for (int64_t i = at; i < at + k; ++i) host[i] += 0.01f;
      for (const auto& [at, k] : held)
        ASSERT_EQ(cudaMemcpy(shard.params() + at, host + at, size_t(k) * 4, cudaMemcpyHostToDevice),
                  cudaSuccess);
      ASSERT_EQ(cudaMemcpy(m.gpu->params(), host, size_t(n) * 4, cudaMemcpyHostToDevice),
                cudaSuccess);
      gpu.ParamsChanged(false);
    }
    const Batch& b = m.batches[1];
    ASSERT_TRUE(m.gpu->ZeroGrads().ok());
    auto want = m.gpu->ForwardBackward(b);
    ASSERT_TRUE(want.ok()) << want.status().message();
    std::vector<float> want_g(n);
    ASSERT_TRUE(m.gpu->CopyGradsToHost(want_g.data()).ok());
    shard.ZeroGrads();
    auto got = gpu.ForwardBackward(b);
    ASSERT_TRUE(got.ok()) << got.status().message();
    EXPECT_EQ(got->loss, want->loss) << fixture;
    // The shard's gradients: what trains only, one range after another (compact on a GPU).
    ASSERT_TRUE(shard.compact_grads());
    std::vector<float> g(shard.trainable_floats());
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    ASSERT_EQ(cudaMemcpy(g.data(), shard.grads(), g.size() * 4, cudaMemcpyDeviceToHost),
              cudaSuccess);
    int64_t at_g = 0, differ = 0;
    for (const auto& [at, k] : shard.trainable_ranges())
      for (int64_t i = 0; i < k; ++i) differ += g[at_g++] != want_g[at + i];
    EXPECT_EQ(differ, 0) << fixture << ": adapter gradients that differ";
  }
}

// Adapters the GPU does not apply (an MoE layer's shared experts, which only a config made
// without ResolveLora can ask for) are refused when the model is made, naming the layer.
class LoraCudaRefusals : public cudatest::CudaTest<int> {};

TEST_P(LoraCudaRefusals, AdaptersOnSharedExpertsAreRefused) {
  auto cfg = ModelConfig::Load(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  cfg->lora.rank = 2;
  cfg->lora.alpha = 4;
  cfg->lora.targets = {"q_a_proj", "gate_proj"};
  auto made = cuda::CudaModel::Create(*cfg, nullptr);
  ASSERT_FALSE(made.ok());
  EXPECT_NE(made.status().message().find("shared experts"), std::string::npos)
      << made.status().message();
  cfg->lora.targets = {"q_a_proj"};
  EXPECT_TRUE(cuda::CudaModel::Create(*cfg, nullptr).ok());
}

INSTANTIATE_TEST_SUITE_P(Once, LoraCudaRefusals, ::testing::Values(0));

std::vector<Case> Cases(double dropout) {
  return {Case{"qwen3_dense_tiny", "all-linear", 6.0, false, dropout, ""},
          Case{"qwen3_moe_tiny", "auto", 6.0, true, dropout, ""},
          Case{"mixtral_tiny", "o_proj", 8.0, false, dropout, ""},
          Case{"deepseek_v3_tiny", "auto", 8.0, false, dropout, ""},
          Case{"variants/deepseek_v3_v4_plain_q", "q_proj, kv_b_proj", 8.0, false, dropout, ""},
          Case{"variants/gpt_oss_tiny", "auto", 8.0, false, dropout, ""}};
}

// Adapters on the routed experts (PEFT's target_parameters): both weights beside attention,
// down_proj alone with nothing else, gate_up_proj alone beside latent attention, and GPT-OSS's
// by layer.
std::vector<Case> ExpertCases() {
  return {Case{"qwen3_moe_tiny", "q_proj", 6.0, false, 0.0,
               "mlp.experts.gate_up_proj, mlp.experts.down_proj"},
          Case{"mixtral_tiny", "", 8.0, true, 0.0, "experts.down_proj"},
          Case{"deepseek_v3_tiny", "q_a_proj", 8.0, false, 0.0, "gate_up_proj"},
          // GPT-OSS (the clamped GLU, biases): one layer's gate_up, another's down
          Case{"variants/gpt_oss_tiny", "auto", 8.0, false, 0.0,
               "1.mlp.experts.gate_up_proj, 0.mlp.experts.down_proj"}};
}

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  std::string name = std::get<0>(info.param);
  for (char& c : name)
    if (!isalnum(static_cast<unsigned char>(c))) c = '_';
  return name;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraCuda, ::testing::ValuesIn(Cases(0.0)), CaseName);
// LoRA's dropout: the GPU draws the CPU's masks (the batches' noise keys) in the forward, the
// backward and a recomputed layer alike, in fp32 and bf16.
INSTANTIATE_TEST_SUITE_P(Dropout, LoraCuda, ::testing::ValuesIn(Cases(0.3)), CaseName);
// The routed experts' adapters: the grouped products of cuda/moe_block.cc against the CPU's.
INSTANTIATE_TEST_SUITE_P(Experts, LoraCuda, ::testing::ValuesIn(ExpertCases()), CaseName);

}  // namespace
}  // namespace xt
