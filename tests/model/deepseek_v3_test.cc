// DeepSeek-V3 beyond the fixture's parity: its config.json as the hub writes it (and every way one
// can ask for what is not implemented), the checkpoint's multi-token-prediction layers, save and
// load, generation with a cache, and the CUDA backend's plan.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/fixture_files.h"
#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/config.h"
#include "xtuner/model/rope_tables.h"
#include "xtuner/plan/cuda_step.h"
#include "xtuner/plan/plan.h"
#include "xtuner/train/metrics_flops.h"

namespace xt {
namespace {

using nlohmann::json;

// deepseek-ai/DeepSeek-V3's config.json as published (remote-code spellings, YaRN, FP8
// quantization_config): examples/configs/deepseek-v3.json.
json HubConfig() {
  std::ifstream in(testing::DataPath("../../examples/configs/deepseek-v3.json"));
  return testing::Json(in);
}

std::string ErrorOf(const json& j) {
  auto r = ModelConfig::FromJson(j, "cfg.json");
  return r.ok() ? "" : r.status().message();
}

TEST(DeepseekV3Config, ReadsTheFixture) {
  auto c = ModelConfig::Load(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->arch, Arch::kDeepseekV3);
  EXPECT_TRUE(c->mla);
  EXPECT_EQ(c->router, RouterKind::kSigmoidGroup);
  EXPECT_EQ(c->head_dim, 24);  // nope 16 + rope 8, not the config's head_dim 8
  EXPECT_EQ(c->rope_dim(), 8);
  EXPECT_EQ(c->value_dim(), 16);
  EXPECT_EQ(c->q_lora_rank, 32);
  EXPECT_EQ(c->kv_lora_rank, 16);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->n_shared_experts, 1);
  EXPECT_EQ(c->n_group, 2);
  EXPECT_EQ(c->topk_group, 1);
  EXPECT_DOUBLE_EQ(c->routed_scaling_factor, 2.5);
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{false, true, true}));
  EXPECT_EQ(c->router_aux_loss_coef, 0.0);
  EXPECT_FALSE(c->qk_norm);
}

TEST(DeepseekV3Config, ReadsTheHubConfigAndCountsItsParameters) {
  auto c = ModelConfig::FromJson(HubConfig(), "hub");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->num_moe_layers(), 58);
  EXPECT_EQ(c->head_dim, 192);
  EXPECT_TRUE(c->fp8_weights);  // its FP8 weights are dequantized on load, in blocks of 128 x 128
  EXPECT_EQ(c->fp8_block[0], 128);
  EXPECT_EQ(c->fp8_block[1], 128);
  // 671B in the main model (DeepSeek-V3's report; the MTP module's 14B come on top), 37B active.
  PlanInputs in;
  in.model = *c;
  in.model_name = "deepseek-v3";
  in.seq = 4096;
  auto r = Plan(in);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_NEAR(double(r->total_params) / 1e9, 671.0, 1.0);
  EXPECT_NEAR(double(r->active_params) / 1e9, 37.5, 0.6);
  // Attention FLOPs count the query/key width (192) for Q K^T and the value width (128) for P V.
  EXPECT_EQ(c->attention_flops_dim(), 128 * (192 + 128) / 2);
  EXPECT_DOUBLE_EQ(r->flops_per_token,
                   TrainingFlopsPerToken(r->matmul_params, 61, 128 * 160, 4096));
  // A config without q_lora_rank's value means a plain q_proj.
  json plain = HubConfig();
  plain["q_lora_rank"] = nullptr;
  auto p = ModelConfig::FromJson(plain, "plain");
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->q_lora_rank, 0);
  EXPECT_TRUE(ParamLayout(*p).Find("model.layers.0.self_attn.q_proj.weight"));
  EXPECT_FALSE(ParamLayout(*p).Find("model.layers.0.self_attn.q_a_proj.weight"));
  // transformers' aliases: num_local_experts for n_routed_experts, num_mtp_layers for
  // num_nextn_predict_layers.
  json alias = HubConfig();
  alias.erase("n_routed_experts");
  alias.erase("num_nextn_predict_layers");
  alias["num_local_experts"] = 64;
  alias["num_mtp_layers"] = 2;
  auto a = ModelConfig::FromJson(alias, "alias");
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->num_experts, 64);
  EXPECT_EQ(a->num_nextn_predict_layers, 2);
}

TEST(DeepseekV3Config, WhatIsNotImplementedIsNamed) {
  struct Case {
    const char* key;
    json value;
    const char* says;
  };
  const Case cases[] = {
      {"scoring_func", "softmax", "scoring_func"},
      {"topk_method", "greedy", "topk_method"},
      {"moe_layer_freq", 2, "moe_layer_freq"},
      {"quantization_config", json{{"quant_method", "fp8"}, {"fmt", "e5m2"}},
       "quantization_config.fmt \"e5m2\""},
      {"n_group", 3, "n_group (3)"},
      {"topk_group", 9, "topk_group (9) exceeds n_group (8)"},
      {"num_experts_per_tok", 200, "num_experts_per_tok (200)"},
      {"num_key_value_heads", 64, "must equal num_attention_heads"},
      {"first_k_dense_replace", 62, "first_k_dense_replace (62)"},
      {"qk_rope_head_dim", 7, "qk_rope_head_dim must be even"},
      {"v_head_dim", 400, "v_head_dim (400)"},
      {"rope_scaling", json{{"type", "linear"}, {"factor", 4}}, "\"linear\" is not implemented"},
      {"rope_scaling", json{{"type", "yarn"}, {"factor", -1}}, "factor must be a positive"},
      {"kv_lora_rank", nullptr, "kv_lora_rank"},
      {"routed_scaling_factor", 0, "routed_scaling_factor"},
      {"q_lora_rank", 0, "q_lora_rank (null for a plain q_proj)"},
      {"norm_topk_prob", nullptr, "\"norm_topk_prob\" must be true or false, found null"},
      {"rope_interleave", nullptr, "\"rope_interleave\" must be true or false, found null"},
      {"n_group", 128, "n_group > 64"},
  };
  for (const Case& c : cases) {
    json j = HubConfig();
    j[c.key] = c.value;
    const std::string err = ErrorOf(j);
    EXPECT_NE(err.find(c.says), std::string::npos) << c.key << ": " << err;
    EXPECT_EQ(err.rfind("cfg.json: ", 0), 0u) << c.key << ": " << err;
  }
}

// deepseek-ai/DeepSeek-V3's own rope_scaling: YaRN with mscale = mscale_all_dim (so cos and sin
// keep their size) and the softmax scale times mscale(40, 1)^2, as transformers computes them.
TEST(DeepseekV3Config, ReadsTheHubsYarn) {
  json j = HubConfig();
  j["rope_scaling"] = {{"beta_fast", 32},       {"beta_slow", 1},
                       {"factor", 40},          {"mscale", 1.0},
                       {"mscale_all_dim", 1.0}, {"original_max_position_embeddings", 4096},
                       {"type", "yarn"}};
  auto c = ModelConfig::FromJson(j, "hub");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor, 1.0);
  const double m = 0.1 * std::log(40.0) + 1.0;
  EXPECT_DOUBLE_EQ(c->softmax_scale(), m * m / std::sqrt(192.0));
  // The frequencies: transformers' blend, in double here. Below the ramp the default ones, above
  // it the default ones over the factor.
  const std::vector<float> inv = RopeInvFreq(*c);
  ASSERT_EQ(inv.size(), 32u);
  const double dim = 64, base = 10000, orig = 4096;
  auto corr = [&](double rot) {
    return dim * std::log(orig / (rot * 2 * M_PI)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(corr(32)), 0.0),
               high = std::min(std::ceil(corr(1)), dim - 1);
  for (int i = 0; i < 32; ++i) {
    const double pf = std::pow(base, 2.0 * i / dim);
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double want = (1.0 / (40 * pf)) * ramp + (1.0 / pf) * (1 - ramp);
    EXPECT_NEAR(inv[i], want, 2e-6 * want) << i;
  }
  EXPECT_GT(low, 0);
  EXPECT_LT(high, 31);  // the ramp lies inside the dims: some extrapolated, some interpolated
  // The round trip through ToJson keeps it.
  auto b = ModelConfig::FromJson(c->ToJson(), "again");
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(RopeInvFreq(*b), inv);
  EXPECT_DOUBLE_EQ(b->softmax_scale(), c->softmax_scale());
}

TEST(DeepseekV3Config, ToJsonRoundTrips) {
  json j = HubConfig();
  j["q_lora_rank"] = nullptr;
  j["rope_interleave"] = false;
  j["norm_topk_prob"] = false;
  auto a = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(a.ok()) << a.status().message();
  auto b = ModelConfig::FromJson(a->ToJson(), "y");
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(ParamLayout(*a).total(), ParamLayout(*b).total());
  EXPECT_EQ(a->layer_is_moe, b->layer_is_moe);
  EXPECT_EQ(b->q_lora_rank, 0);
  EXPECT_FALSE(b->rope_interleave);
  EXPECT_FALSE(b->norm_topk_prob);
  EXPECT_EQ(b->n_group, 8);
  EXPECT_EQ(b->topk_group, 4);
  EXPECT_EQ(b->head_dim, 192);
  EXPECT_EQ(a->ToJson(), b->ToJson());
}

// The CUDA backend runs it (tests/cuda/model_cuda_test.cc), and `xtuner plan --device cuda`
// plans it: on the GPU its attention stays on the fp32 kernels in bf16 mode.
TEST(DeepseekV3Config, TheCudaBackendAndItsPlanTakeIt) {
  auto c = ModelConfig::Load(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(c.ok());
  PlanInputs in;
  in.model = *c;
  in.model_name = "tiny";
  in.seq = 64;
  in.device = Device::kCuda;
  in.precision = Precision::kBf16;
  auto r = Plan(in);
  ASSERT_TRUE(r.ok()) << r.status().message();
  // Latent attention stays on the fp32 kernels even where the bf16 ones take the head dim (16).
  auto tiny = ModelConfig::FromJson(testing::Json(testing::TinyDeepseekV3Config()), "tiny");
  ASSERT_TRUE(tiny.ok()) << tiny.status().message();
  ASSERT_EQ(tiny->head_dim, 16);
  EXPECT_FALSE(PlansBf16Attention(*tiny, true, true));
  ModelConfig gqa = *ModelConfig::Load(testing::DataPath("qwen3_moe_tiny"));
  EXPECT_EQ(gqa.head_dim % 16, 0);
  EXPECT_TRUE(PlansBf16Attention(gqa, true, true));  // the check above can fail
}

// The fixture's tensors plus extra ones, written with its config.json; returns the directory.
std::string WithExtraTensors(const testing::NamedTensors& extra) {
  testing::NamedTensors tensors = testing::FixtureTensors("deepseek_v3_tiny");
  tensors.insert(tensors.end(), extra.begin(), extra.end());
  return testing::WriteFixtureCopy("deepseek_v3_tiny", tensors);
}

TEST(DeepseekV3Checkpoint, MtpLayersAreSkippedAndAnythingElseIsNamed) {
  // num_nextn_predict_layers = 1 after 3 layers: model.layers.3.* is the MTP module.
  auto ok = LoadHfModel(WithExtraTensors(
      {{"model.layers.3.eh_proj.weight", Tensor::Zeros(DType::F32, {64, 128})},
       {"model.layers.3.mlp.experts.0.up_proj.weight", Tensor::Zeros(DType::F32, {24, 64})}}));
  EXPECT_TRUE(ok.ok()) << ok.status().message();
  auto bad = LoadHfModel(
      WithExtraTensors({{"model.layers.4.eh_proj.weight", Tensor::Zeros(DType::F32, {64, 128})}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("unexpected tensor \"model.layers.4.eh_proj.weight\""),
            std::string::npos)
      << bad.status().message();
}

constexpr const char* kBias = "model.layers.1.mlp.gate.e_score_correction_bias";

TEST(DeepseekV3Checkpoint, SaveLoadRoundTripIsExact) {
  auto a = LoadHfModel(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(a.ok()) << a.status().message();
  const std::string dir = testing::TempDir("dsv3_save");
  ASSERT_TRUE(SaveHfModel(**a, dir, ExportDType::kF32, 128 << 10).ok());
  auto b = LoadHfModel(dir);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ((*b)->config().arch, Arch::kDeepseekV3);
  EXPECT_EQ((*b)->layout().total(), (*a)->layout().total());
  EXPECT_EQ(std::memcmp((*a)->params().data(), (*b)->params().data(), (*a)->params().nbytes()), 0);
  // The router bias is saved under transformers' name, and the reloaded model computes the same.
  auto f = SafetensorsCheckpoint::Open(dir);
  ASSERT_TRUE(f.ok());
  EXPECT_TRUE(f->contains("model.layers.1.mlp.gate.e_score_correction_bias"));
  std::vector<int64_t> ids = {3, 1, 4, 1, 5, 9, 2, 6, 5, 3};
  auto batch = Batch::FromRows(ids, ids, 1, int64_t(ids.size()));
  ASSERT_TRUE(batch.ok());
  auto la = (*a)->Forward(*batch, false, false), lb = (*b)->Forward(*batch, false, false);
  ASSERT_TRUE(la.ok() && lb.ok());
  EXPECT_EQ(la->loss.loss, lb->loss.loss);
  // A bf16 export rounds the weights but keeps the bias F32 (as transformers does): its small
  // per-step moves would round away in bf16.
  float* bias = (*a)->params().f32() + (*a)->layout().Find(kBias)->offset;
  for (int e = 0; e < 8; ++e) bias[e] = 0.1234567f + 0.001f * float(e);
  const std::string dir16 = testing::TempDir("dsv3_bf16");
  ASSERT_TRUE(SaveHfModel(**a, dir16, ExportDType::kBf16, 0).ok());
  auto f16 = SafetensorsCheckpoint::Open(dir16);
  ASSERT_TRUE(f16.ok());
  EXPECT_EQ(f16->Info(kBias)->dtype, "F32");
  EXPECT_EQ(f16->Info("model.layers.1.mlp.gate.weight")->dtype, "BF16");
  auto c16 = LoadHfModel(dir16);
  ASSERT_TRUE(c16.ok()) << c16.status().message();
  EXPECT_EQ(std::memcmp((*c16)->params().f32() + (*c16)->layout().Find(kBias)->offset, bias, 32),
            0);
}

TEST(DeepseekV3Model, TheCorrectionBiasSteersTheChoiceWithoutAGradient) {
  auto m = LoadHfModel(testing::DataPath("deepseek_v3_tiny"));
  ASSERT_TRUE(m.ok());
  Transformer& model = **m;
  std::vector<int64_t> ids = {7, 300, 2, 45, 45, 45, 12, 0, 99, 310, 5, 6};
  auto batch = Batch::FromRows(ids, ids, 1, int64_t(ids.size()));
  ASSERT_TRUE(batch.ok());
  model.ZeroGrads();
  auto base = model.ForwardBackward(*batch);
  ASSERT_TRUE(base.ok());
  const ParamInfo* bias = model.layout().Find("model.layers.1.mlp.gate.e_score_correction_bias");
  ASSERT_TRUE(bias && bias->no_grad);
  for (int64_t e = 0; e < 8; ++e) EXPECT_EQ(model.grads().f32()[bias->offset + e], 0.0f);
  // Every token of layer 1 to experts 6 and 7: a large bias on them alone.
  model.params().f32()[bias->offset + 6] = 10.0f;
  model.params().f32()[bias->offset + 7] = 10.0f;
  auto steered = model.Forward(*batch, false, false);
  ASSERT_TRUE(steered.ok());
  const std::vector<int64_t>& counts = steered->loss.tokens_per_expert[0];
  EXPECT_EQ(counts[6], int64_t(ids.size()));
  EXPECT_EQ(counts[7], int64_t(ids.size()));
  EXPECT_NE(steered->loss.loss, base->loss);
  EXPECT_EQ(base->aux_loss, 0.0);  // DeepSeek-V3 has no balancing loss
  // Not even when a caller sets a coefficient: there is no softmax-router loss to weigh.
  ModelConfig with_coef = model.config();
  with_coef.router_aux_loss_coef = 0.5;
  Transformer other(with_coef);
  std::memcpy(other.params().data(), model.params().data(), model.params().nbytes());
  auto info = other.ForwardBackward(*batch);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->loss, info->ce_loss);
}

}  // namespace
}  // namespace xt
