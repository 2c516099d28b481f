// xtuner plan: the planner's figures against what the engine measures, the sharding arithmetic,
// the published sizes of Qwen3-30B-A3B and Qwen3-235B-A22B, and its errors.
#include "xtuner/plan/plan.h"

#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "util/cli.h"
#include "util/testing.h"
#include "xtuner/core/rng.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/transformer.h"

namespace xt {
namespace {

ModelConfig Config(const std::string& path) {
  auto c = ModelConfig::Load(path);
  EXPECT_TRUE(c.ok()) << c.status().message();
  return c.ok() ? *c : ModelConfig();
}

std::string Example(const std::string& name) {
  return testing::DataPath("../../examples/configs/" + name);
}

// A Qwen3-MoE with dense layers among the MoE ones and tied embeddings.
ModelConfig MixedConfig() {
  nlohmann::json j = {{"model_type", "qwen3_moe"},
                      {"vocab_size", 300},
                      {"hidden_size", 48},
                      {"num_hidden_layers", 4},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"head_dim", 16},
                      {"intermediate_size", 80},
                      {"moe_intermediate_size", 24},
                      {"num_experts", 6},
                      {"num_experts_per_tok", 3},
                      {"mlp_only_layers", {0, 2}},
                      {"tie_word_embeddings", true},
                      {"router_aux_loss_coef", 0.01}};
  auto c = ModelConfig::FromJson(j, "mixed");
  EXPECT_TRUE(c.ok()) << c.status().message();
  return *c;
}

PlanReport MustPlan(const PlanInputs& in) {
  auto r = Plan(in);
  EXPECT_TRUE(r.ok()) << r.status().message();
  return r.ok() ? *r : PlanReport();
}

// B rows of S random tokens, every token but each row's last carrying a loss.
Batch RandomBatch(int64_t V, int64_t B, int64_t S, uint64_t seed) {
  std::vector<int64_t> ids(B * S);
  for (int64_t& id : ids) id = int64_t(SplitMix64(&seed) % uint64_t(V));
  auto b = Batch::FromRows(ids, ids, B, S);
  EXPECT_TRUE(b.ok());
  return *b;
}

TEST(PlanAgreement, ActivationsAndStateMatchTheEngineWithin10Percent) {
  std::vector<std::pair<std::string, ModelConfig>> models = {
      {"qwen3_moe_tiny", Config(testing::DataPath("qwen3_moe_tiny"))},
      {"mixtral_tiny", Config(testing::DataPath("mixtral_tiny"))},
      {"qwen3_dense_tiny", Config(testing::DataPath("qwen3_dense_tiny"))},
      {"deepseek_v3_tiny", Config(testing::DataPath("deepseek_v3_tiny"))},
      {"mixed", MixedConfig()}};
  for (auto& [name, cfg] : models) {
    Transformer model(cfg);
    for (auto [B, S] : {std::pair<int64_t, int64_t>{2, 48}, {1, 200}}) {
      const Batch batch = RandomBatch(cfg.vocab_size, B, S, 7);
      for (double fraction : {0.0, 0.5, 1.0}) {
        model.SetRecompute(fraction);
        model.ZeroGrads();
        auto info = model.ForwardBackward(batch);
        ASSERT_TRUE(info.ok()) << info.status().message();
        PlanInputs in;
        in.model = cfg;
        in.model_name = name;
        in.seq = S;
        in.micro_batch_size = B;
        in.recompute = fraction;
        const PlanReport r = MustPlan(in);
        EXPECT_EQ(r.recompute_layers, model.recompute_layers());
        const double measured = double(info->activation_bytes);
        EXPECT_NEAR(double(r.activation_bytes) / measured, 1.0, 0.10)
            << name << " T=" << B * S << " recompute " << fraction << ": planned "
            << r.activation_bytes << " measured " << info->activation_bytes;
      }
    }
    PlanInputs in;
    in.model = cfg;
    in.model_name = name;
    in.seq = 64;
    const PlanReport r = MustPlan(in);
    EXPECT_EQ(r.total_params, model.layout().total()) << name;
    EXPECT_EQ(r.local_params, model.layout().total()) << name;
    EXPECT_EQ(r.weight_bytes + r.grad_bytes + r.optimizer_bytes, 16 * model.layout().total())
        << name;
    EXPECT_EQ(r.working_bytes, 0) << name << ": one fp32 rank works on the slab in place";
    EXPECT_EQ(r.all_to_all_bytes, 0) << name;
  }
}

// The CPU keeps every buffer in fp32 at either precision; the GPU holds some activations in
// bf16 and a bf16 copy of the weights (tests/cuda/plan_cuda_test.cc checks its figures against
// the CUDA model's allocations).
TEST(PlanAgreement, RecomputeShrinksActivationsAndBf16OnlyTheGpus) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "30b";
  in.seq = 4096;
  const PlanReport fp32 = MustPlan(in);
  EXPECT_LT(fp32.activation_bytes_all_recompute, fp32.activation_bytes_no_recompute / 10);
  EXPECT_EQ(fp32.activation_bytes, fp32.activation_bytes_no_recompute);
  in.precision = Precision::kBf16;
  const PlanReport cpu_bf16 = MustPlan(in);
  EXPECT_EQ(cpu_bf16.total_bytes, fp32.total_bytes);
  EXPECT_EQ(cpu_bf16.working_bytes, 0);  // one rank works on its slab in place

  in.device = Device::kCuda;
  const PlanReport gpu_bf16 = MustPlan(in);
  in.precision = Precision::kFp32;
  const PlanReport gpu_fp32 = MustPlan(in);
  EXPECT_LT(gpu_fp32.activation_bytes_all_recompute, gpu_fp32.activation_bytes_no_recompute / 10);
  // h1, the experts' outputs, SwiGLU's input and output, attention's q, k, v and output in bf16:
  // half of (H + 8 H + 8 * 2I + 8 I + 2 Hq D + 2 Hkv D) = 23.0k of the 57.2k elements a token and
  // layer keeps (the experts' input rows, 8 H, are permuted again in the backward, not kept).
  const double ratio = double(gpu_bf16.activation_bytes) / double(gpu_fp32.activation_bytes);
  EXPECT_GT(ratio, 0.58);
  EXPECT_LT(ratio, 0.61);
  EXPECT_EQ(gpu_fp32.copy_bytes, 0);
  const int64_t embed = 151936 * 2048;  // untied: the input embedding's lookup reads fp32
  EXPECT_EQ(gpu_bf16.copy_bytes, 2 * (gpu_bf16.total_params - embed));
  EXPECT_EQ(gpu_bf16.weight_bytes + gpu_bf16.grad_bytes + gpu_bf16.optimizer_bytes,
            16 * gpu_bf16.total_params);  // fp32 master state either way
  EXPECT_EQ(gpu_bf16.total_bytes, 16 * gpu_bf16.total_params + gpu_bf16.copy_bytes +
                                      gpu_bf16.workspace_bytes + gpu_bf16.step_peak_bytes);
  EXPECT_GE(gpu_bf16.step_peak_bytes, gpu_bf16.step_peak_activation_bytes);
  EXPECT_GT(gpu_bf16.step_peak_activation_bytes, 0);
}

// Attention never builds the T x T scores and the loss goes by chunks: where the step peaks at
// the same point of the step, its memory grows linearly in the tokens, with or without recompute.
TEST(PlanAgreement, GpuStepGrowsLinearlyInTheTokens) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "30b";
  in.device = Device::kCuda;
  in.precision = Precision::kBf16;
  in.world = in.ep = 8;
  for (double recompute : {0.0, 1.0}) {
    in.recompute = recompute;
    int64_t peak[3];
    std::string at[3];
    for (int i = 0; i < 3; ++i) {
      in.seq = 32768 * (i + 1);
      const PlanReport r = MustPlan(in);
      at[i] = r.step_peak_at;
      peak[i] = r.step_peak_bytes;
    }
    ASSERT_EQ(at[0], at[1]);
    ASSERT_EQ(at[1], at[2]);
    EXPECT_NEAR(double(peak[2] - peak[1]) / double(peak[1] - peak[0]), 1.0, 0.01) << recompute;
  }
}

TEST(PlanSharding, StatePerRankIsAboutTotalOverWorld) {
  for (const char* file : {"qwen3-30b-a3b.json", "qwen3-235b-a22b.json"}) {
    PlanInputs in;
    in.model = Config(Example(file));
    in.model_name = file;
    in.seq = 1024;
    int64_t unit_ep1 = 0;
    for (auto [world, ep] : {std::pair<int64_t, int64_t>{2, 1}, {4, 1}, {2, 2}, {4, 2}}) {
      in.world = world;
      in.ep = ep;
      const PlanReport r = MustPlan(in);
      const double ideal = double(r.total_params) / double(world);
      EXPECT_GE(double(r.local_params), ideal) << file << " " << world << "/" << ep;
      EXPECT_LT(double(r.local_params), ideal * 1.001) << file << " " << world << "/" << ep;
      EXPECT_EQ(r.weight_bytes + r.grad_bytes + r.optimizer_bytes, 16 * r.local_params);
      EXPECT_EQ(r.dp, world / ep);
      EXPECT_EQ(r.experts_per_rank, 128 / ep);
      EXPECT_GT(r.working_bytes, 0);
      EXPECT_EQ(r.all_to_all_bytes > 0, ep > 1);
      if (ep == 1 && world == 2) unit_ep1 = r.largest_unit;
      // Expert parallelism halves the experts a rank gathers per layer.
      if (ep == 2) {
        EXPECT_LT(r.largest_unit, unit_ep1 * 6 / 10) << file;
      }
    }
  }
  // Small units: the ceil-divided chunks add at most one element per unit and rank.
  PlanInputs in;
  in.model = Config(testing::DataPath("qwen3_moe_tiny"));
  in.model_name = "tiny";
  in.seq = 16;
  in.world = 4;
  in.ep = 2;
  const PlanReport r = MustPlan(in);
  const int64_t units = 2 + 2 * in.model.num_layers;
  EXPECT_GE(r.local_params * 4, r.total_params);
  EXPECT_LE(r.local_params * 4, r.total_params + 4 * units);
}

// LoRA: the weights stay, the gradients and AdamW moments are the adapters' (split over the
// ranks): Qwen3-30B-A3B's attention at rank 16 is about 0.1% of the model.
TEST(PlanSharding, LoraStateIsTheAdapters) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "qwen3-30b-a3b";
  in.seq = 1024;
  const PlanReport full = MustPlan(in);
  in.model.lora.rank = 16;
  in.model.lora.alpha = 32;
  in.model.lora.targets = {"q_proj", "k_proj", "v_proj", "o_proj"};
  for (int64_t world : {1, 4}) {
    in.world = world;
    const PlanReport r = MustPlan(in);
    // Per layer: q (4096 x 2048), k and v (512 x 2048), o (2048 x 4096), each A (16, in) + B.
    const int64_t per_layer = 16 * ((2048 + 4096) + 2 * (2048 + 512) + (4096 + 2048));
    EXPECT_EQ(r.trainable_params, 48 * per_layer);
    EXPECT_EQ(r.local_trainable, (r.trainable_params + world - 1) / world);
    EXPECT_EQ(r.grad_bytes, 4 * r.local_trainable);
    EXPECT_EQ(r.optimizer_bytes, 8 * r.local_trainable);
    EXPECT_EQ(r.weight_bytes, 4 * r.local_params);
    if (world == 1) {
      EXPECT_EQ(r.total_params, full.total_params + r.trainable_params);
      EXPECT_LT(r.trainable_params, full.total_params / 500);
      EXPECT_LT(r.total_bytes, full.total_bytes * 3 / 10);  // fp32 weights + activations
    }
  }
  // The adapters' backward scratch sits beside attention's temporaries, which Qwen3-30B-A3B's
  // experts' outgrow: the step's scratch is unchanged, dropout's masked copies too.
  in.world = 1;
  EXPECT_EQ(MustPlan(in).backward_scratch_bytes, full.backward_scratch_bytes);
  in.model.lora.dropout = 0.1;
  EXPECT_EQ(MustPlan(in).backward_scratch_bytes, full.backward_scratch_bytes);
  // The routed experts' adapters too (PEFT's target_parameters): rank 16 on each of the 128
  // experts' gate_up (1536 x 2048) and down (2048 x 768), 2% of the model; their backward's
  // scratch (z, dz (A, 16), dy (A, 1536) and dz A (A, 2048) over A = 8 T rows) adds to the
  // experts' phase.
  in.model.lora.dropout = 0;
  in.model.lora.expert_targets = {"mlp.experts.gate_up_proj", "mlp.experts.down_proj"};
  const PlanReport experts = MustPlan(in);
  const int64_t attention = 16 * ((2048 + 4096) + 2 * (2048 + 512) + (4096 + 2048));
  EXPECT_EQ(experts.trainable_params, 48 * (attention + 128 * 16 * (2048 + 1536 + 768 + 2048)));
  EXPECT_LT(experts.trainable_params, full.total_params / 40);
  const int64_t A = 8 * 1024;
  EXPECT_EQ(experts.backward_scratch_bytes - full.backward_scratch_bytes,
            4 * A * (2 * 16 + 1536 + 2048));
  // On 8 ranks with ep 8 each rank holds 16 experts' adapters (with their experts), and an
  // eighth of the attention's; the active parameters count a token's 8 experts' adapters.
  in.world = in.ep = 8;
  const PlanReport ep8 = MustPlan(in);
  EXPECT_EQ(ep8.local_trainable, (48 * attention + 7) / 8 + 48 * 16 * 16 * 6400);
  EXPECT_EQ(ep8.active_params - full.active_params, 48 * (attention + 8 * 16 * 6400));
  EXPECT_EQ(ep8.expert_params - full.expert_params, 48 * 128 * 16 * 6400);  // counted with them
  in.world = in.ep = 1;
  in.model.lora.expert_targets.clear();
  // Dense layers (I 6144) with adapters on the MLP: beside its temporaries (3 T I, the larger
  // phase), the largest adapter's z, dz (T, 16) and dy (T, rows): gate_proj's (rows 6144);
  // with dropout also the masked input and its gradient (T, in): down_proj's (in 6144, rows
  // 2048) is then the largest.
  in.model.layer_is_moe.assign(48, false);
  in.model.intermediate_size = 6144;
  in.model.lora.targets = {"gate_proj", "up_proj", "down_proj"};
  in.model.lora.dropout = 0;
  const PlanReport dense = MustPlan(in);
  in.model.lora.rank = 0;
  const PlanReport dense_full = MustPlan(in);
  in.model.lora.rank = 16;
  in.model.lora.dropout = 0.1;
  const PlanReport dense_dropout = MustPlan(in);
  const int64_t T = 1024;
  EXPECT_EQ(dense.backward_scratch_bytes - dense_full.backward_scratch_bytes, 4 * T * (32 + 6144));
  EXPECT_EQ(dense_dropout.backward_scratch_bytes - dense_full.backward_scratch_bytes,
            4 * T * (32 + 2048 + 2 * 6144));
}

TEST(PlanModels, Qwen3MoeSizesMatchThePublishedOnes) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "30b";
  in.seq = 4096;
  PlanReport r = MustPlan(in);
  EXPECT_NEAR(double(r.total_params) / 1e9, 30.53, 0.02);  // HF: 30.5B total
  EXPECT_NEAR(double(r.active_params) / 1e9, 3.35, 0.05);  // HF: 3.3B activated
  in.model = Config(Example("qwen3-235b-a22b.json"));
  r = MustPlan(in);
  EXPECT_NEAR(double(r.total_params) / 1e9, 235.0, 1.0);  // HF: 235B total
  EXPECT_NEAR(double(r.active_params) / 1e9, 22.0, 0.5);  // HF: 22B activated
  // FLOPs: 6 per active matmul parameter and token, plus attention.
  EXPECT_DOUBLE_EQ(r.flops_per_token_6n, 6.0 * double(r.matmul_params));
  EXPECT_GT(r.flops_per_token, r.flops_per_token_6n);
  EXPECT_EQ(r.matmul_params, r.active_params - 151936 * 4096);  // untied: no lookup FLOPs
}

// The loss chunk is the device's default (loss/cross_entropy.h); never more than T rows.
TEST(PlanModels, LossChunkIsTheDevicesDefault) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "30b";
  in.seq = 4096;
  EXPECT_EQ(MustPlan(in).loss_chunk_rows, 220);  // 2^25 / 151936
  in.gpu_memory_gib = 141;
  EXPECT_EQ(MustPlan(in).loss_chunk_rows, 220);
  in.device = Device::kCuda;
  EXPECT_EQ(MustPlan(in).loss_chunk_rows, 1766);  // 2^28 / 151936
  in.precision = Precision::kBf16;
  EXPECT_EQ(MustPlan(in).loss_chunk_rows, 1766);
  in.seq = 1000;
  EXPECT_EQ(MustPlan(in).loss_chunk_rows, 1000);
  EXPECT_EQ(DefaultLossChunkRows(int64_t(1) << 30, true), 1);
  EXPECT_EQ(DefaultLossChunkRows(int64_t(1) << 30, false), 1);
}

TEST(PlanVerdict, FitsOrSaysWhatItNeeds) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model_name = "30b";
  in.seq = 4096;
  in.world = 8;
  in.ep = 8;
  in.precision = Precision::kBf16;
  in.device = Device::kCuda;
  PlanReport r = MustPlan(in);
  EXPECT_FALSE(r.has_verdict);
  EXPECT_NE(FormatPlan(in, r).find("no verdict"), std::string::npos);
  in.gpu_memory_gib = 141;
  r = MustPlan(in);
  EXPECT_TRUE(r.has_verdict && r.fits);
  EXPECT_NE(FormatPlan(in, r).find("verdict: fits in 141.00 GiB"), std::string::npos);
  in.world = in.ep = 1;  // all 30.5B parameters' state on one GPU: 455 GiB
  r = MustPlan(in);
  EXPECT_FALSE(r.fits);
  EXPECT_GT(r.total_bytes, int64_t(455) << 30);
  EXPECT_NE(FormatPlan(in, r).find("does not fit (needs "), std::string::npos);
  EXPECT_NE(FormatPlan(in, r).find("not even with every layer recomputed"), std::string::npos);
  EXPECT_NE(FormatPlanRow(in, r).find("| does not fit |"), std::string::npos);
  // Where some recompute fits, the verdict names the least that does.
  in.world = in.ep = 8;
  in.seq = 32768;
  r = MustPlan(in);
  ASSERT_FALSE(r.fits);
  ASSERT_GT(r.fits_with_recompute, 0);
  PlanInputs least = in;
  least.recompute = r.fits_with_recompute;
  const PlanReport fits = MustPlan(least);
  EXPECT_TRUE(fits.fits);
  EXPECT_EQ(fits.recompute_layers, r.fits_with_recompute_layers);
  EXPECT_EQ(fits.total_bytes, r.fits_with_recompute_bytes);
  least.recompute = double(r.fits_with_recompute_layers - 1) / double(r.num_layers);
  EXPECT_FALSE(MustPlan(least).fits);  // one layer fewer
  // The least in hundredths: one hundredth less recomputes fewer layers.
  least.recompute = double(std::llround(100 * r.fits_with_recompute) - 1) / 100.0;
  EXPECT_LT(MustPlan(least).recompute_layers, r.fits_with_recompute_layers);
  EXPECT_NE(FormatPlan(in, r).find("; with --recompute "), std::string::npos) << FormatPlan(in, r);
  EXPECT_NE(FormatPlanRow(in, r).find("does not fit; fits with --recompute "), std::string::npos);
}

// The CUDA trainer's check before its first step: OK with a summary where the step fits, else an
// error naming what it needs, what is free and the smallest model.recompute that fits (or none).
TEST(PlanVerdict, TheGpuTrainerSaysWhichRecomputeFits) {
  PlanInputs in;
  in.model = Config(Example("qwen3-30b-a3b.json"));
  in.model.num_layers = 4;  // the benchmark's model: gpu_moe_bench's cut
  in.model.layer_is_moe.resize(4);
  in.model_name = "bench";
  in.seq = 131072;
  in.precision = Precision::kBf16;
  in.device = Device::kCuda;
  auto need = [&](double recompute) {
    PlanInputs p = in;
    p.recompute = recompute;
    return StepBytes(MustPlan(p));
  };
  const int64_t none = need(0), half = need(0.5), three = need(0.75), all = need(1);
  EXPECT_GT(none, half);
  EXPECT_GT(half, three);
  EXPECT_GE(three, all);

  std::string summary;
  EXPECT_TRUE(CheckStepFits(in, none, &summary).ok());
  EXPECT_NE(summary.find("the largest micro-batch (131072 tokens) needs about"), std::string::npos)
      << summary;
  EXPECT_NE(summary.find("(tight: "), std::string::npos) << summary;  // no room to spare
  EXPECT_TRUE(CheckStepFits(in, none + (int64_t(10) << 30), &summary).ok());
  EXPECT_EQ(summary.find("tight"), std::string::npos) << summary;
  Status s = CheckStepFits(in, none - 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("train.micro_batch_size 1 x data.max_length 131072"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("set model.recompute = 0.13 (1 of 4 layers"), std::string::npos)
      << s.message();
  s = CheckStepFits(in, half);  // two layers fit, one does not
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("set model.recompute = 0.38 (2 of 4 layers"), std::string::npos)
      << s.message();
  s = CheckStepFits(in, all - 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("even with every layer recomputed (model.recompute = 1) it does not "
                             "fit: shorten data.max_length"),
            std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("or shard the state over more GPUs"), std::string::npos);
  PlanInputs mesh = in;  // over several GPUs: the least free memory of any rank, more GPUs
  mesh.world = mesh.ep = 2;
  s = CheckStepFits(mesh, 1);
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.message().find("(the least of any rank's)"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find("more ranks, or a larger parallel.ep"), std::string::npos);
  // On the CPU: the host's memory, more machines.
  PlanInputs host = in;
  host.device = Device::kCpu;
  host.recompute = 0;
  const int64_t cpu_need = StepBytes(MustPlan(host));
  EXPECT_TRUE(CheckStepFits(host, cpu_need).ok());
  s = CheckStepFits(host, cpu_need - 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().rfind("host memory: a micro-batch of 131072 tokens", 0), 0u) << s.message();
  EXPECT_NE(s.message().find("are available: set model.recompute = "), std::string::npos)
      << s.message();
  EXPECT_NE(s.message().find("more machines (mpirun)"), std::string::npos) << s.message();
  in.recompute = 1;
  s = CheckStepFits(in, all - 1);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.message().find("even with"), std::string::npos) << s.message();
  EXPECT_TRUE(CheckStepFits(in, all).ok());
}

TEST(PlanErrors, BadInputsAreNamed) {
  PlanInputs ok;
  ok.model = Config(testing::DataPath("qwen3_moe_tiny"));  // 8 experts
  ok.model_name = "tiny";
  ok.seq = 16;
  auto error = [](PlanInputs in) {
    auto r = Plan(in);
    return r.ok() ? std::string("(no error)") : r.status().message();
  };
  PlanInputs in = ok;
  in.world = 6;
  in.ep = 4;
  EXPECT_NE(error(in).find("--world 6 is not divisible by --ep 4"), std::string::npos);
  in = ok;
  in.world = in.ep = 16;
  EXPECT_NE(error(in).find("8 experts are not divisible by --ep 16"), std::string::npos);
  in = ok;
  in.seq = 0;
  EXPECT_NE(error(in).find("--seq must be positive, got 0"), std::string::npos);
  in = ok;
  in.micro_batch_size = -1;
  EXPECT_NE(error(in).find("--micro-batch-size must be positive"), std::string::npos);
  in = ok;
  in.world = 0;
  EXPECT_NE(error(in).find("--world must be positive"), std::string::npos);
  in = ok;
  in.recompute = 1.5;
  EXPECT_NE(error(in).find("--recompute must be a fraction"), std::string::npos);
  in = ok;
  in.gpu_memory_gib = -1;
  EXPECT_NE(error(in).find("--gpu-memory"), std::string::npos);
  in = ok;
  in.model = Config(testing::DataPath("qwen3_dense_tiny"));
  in.world = in.ep = 2;
  EXPECT_NE(error(in).find("--ep 2 needs an MoE model"), std::string::npos);
  auto p = ParsePrecision("fp16");
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("fp32 or bf16"), std::string::npos);
  auto d = ParseDevice("gpu");
  ASSERT_FALSE(d.ok());
  EXPECT_NE(d.status().message().find("--device must be cpu or cuda, not \"gpu\""),
            std::string::npos);
}

TEST(PlanCli, PrintsTheReportAndNamesBadInput) {
  const std::string cfg = Example("qwen3-30b-a3b.json");
  auto run = testing::RunXtuner("plan --model " + cfg +
                                " --seq 4096 --world 8 --ep 8 --precision bf16 --device cuda"
                                " --gpu-memory 141");
  EXPECT_EQ(run.code, 0) << run.output;
  for (const char* want : {"world 8 = dp 1 x ep 8", "16 experts per rank",
                           "engine       cuda, bf16", "bf16 copy of the units in use",
                           "the step peaks in ", "model FLOPs per token", "verdict: fits"})
    EXPECT_NE(run.output.find(want), std::string::npos) << want << "\n" << run.output;
  run = testing::RunXtuner("plan --model " + cfg + " --seq 4096 --world 12 --ep 8");
  EXPECT_EQ(run.code, 1);
  EXPECT_NE(run.output.find("--world 12 is not divisible by --ep 8"), std::string::npos)
      << run.output;
  const std::string dir = testing::TempDir("plan_cli");
  run = testing::RunXtuner("plan --model " + dir + "/none.json --seq 8");
  EXPECT_EQ(run.code, 1);
  EXPECT_NE(run.output.find(dir + "/none.json"), std::string::npos) << run.output;
  std::ofstream(dir + "/bad.json") << "{\"model_type\": \"qwen3_moe\", \"hidden_size\": ";
  run = testing::RunXtuner("plan --model " + dir + "/bad.json --seq 8");
  EXPECT_EQ(run.code, 1);
  EXPECT_NE(run.output.find("bad.json: not valid JSON"), std::string::npos) << run.output;
  std::ofstream(dir + "/config.json") << "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 10}";
  run = testing::RunXtuner("plan --model " + dir + " --seq 8");
  EXPECT_EQ(run.code, 1);
  EXPECT_NE(run.output.find("missing required key \"hidden_size\""), std::string::npos)
      << run.output;
  // Refused with the message named: exit code 1, or CLI11's own (cli11: true) for an option
  // that needs another.
  struct Refusal {
    std::string args, message;
    bool cli11 = false;
  };
  for (const Refusal& r : std::vector<Refusal>{
           {"--precision fp8", "--precision must be fp32 or bf16"},
           {"--device tpu", "--device must be cpu or cuda"},
           {"--lora-dropout 0.1", "--lora-dropout requires --lora-rank", true},
           {"--lora-rank 0 --lora-targets q_proj", "need --lora-rank > 0"},
           {"--lora-rank 0 --lora-target-parameters down_proj", "need --lora-rank > 0"},
           {"--lora-rank 8 --lora-target-parameters w2", "lora.target_parameters: \"w2\" is not"},
           {"--lora-rank 8 --lora-dropout 1", "lora.dropout must be in [0, 1)"},
           {"--cuda-frozen-weights bf16", "--cuda-frozen-weights must be auto or fp32"}}) {
    run = testing::RunXtuner("plan --model " + cfg + " --seq 8 " + r.args);
    if (r.cli11) {
      EXPECT_NE(run.code, 0) << r.args;
    } else {
      EXPECT_EQ(run.code, 1) << r.args;
    }
    EXPECT_NE(run.output.find(r.message), std::string::npos) << r.args << ": " << run.output;
  }
  run = testing::RunXtuner("plan --model " + cfg + " --seq 8 --lora-rank 8 --lora-dropout 0.1");
  EXPECT_EQ(run.code, 0) << run.output;
  run = testing::RunXtuner("plan --model " + cfg +
                           " --seq 8 --lora-rank 8 --lora-target-parameters "
                           "mlp.experts.gate_up_proj,mlp.experts.down_proj");
  EXPECT_EQ(run.code, 0) << run.output;
}

}  // namespace
}  // namespace xt
