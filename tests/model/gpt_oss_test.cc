// GPT-OSS beyond the fixtures' parity: its config.json as the hub spells it (and transformers'
// defaults), the errors for what is not implemented, its stacked expert tensors in and out of a
// checkpoint (bit for bit, by slices under expert parallelism, with named errors), and MXFP4
// decoding against transformers' (tests/data/variants/gpt_oss_mxfp4/decode.safetensors).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "util/fixture_files.h"
#include "util/testing.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/config.h"
#include "xtuner/model/gpt_oss_experts.h"
#include "xtuner/model/mxfp4.h"
#include "xtuner/plan/cuda_step.h"

namespace xt {
namespace {

using nlohmann::json;

constexpr char kFixture[] = "variants/gpt_oss_tiny";

// openai/gpt-oss-20b's config.json with its sizes cut down (its keys and values otherwise; the
// MXFP4 quantization_config left out: see QuantizedCheckpointsAreRefusedByName).
json HubConfig() {
  return testing::Json(R"({
    "architectures": ["GptOssForCausalLM"], "attention_bias": true, "attention_dropout": 0.0,
    "eos_token_id": 200002, "experts_per_token": 4, "head_dim": 64, "hidden_act": "silu",
    "hidden_size": 256, "initial_context_length": 4096, "initializer_range": 0.02,
    "intermediate_size": 256,
    "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
    "max_position_embeddings": 131072, "model_type": "gpt_oss", "num_attention_heads": 8,
    "num_experts_per_tok": 4, "num_hidden_layers": 4, "num_key_value_heads": 2,
    "num_local_experts": 8, "output_router_logits": false, "pad_token_id": 199999,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
                     "original_max_position_embeddings": 4096, "rope_type": "yarn",
                     "truncate": false},
    "rope_theta": 150000, "router_aux_loss_coef": 0.9, "sliding_window": 128,
    "swiglu_limit": 7.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
    "transformers_version": "4.55.0.dev0", "use_cache": true, "vocab_size": 1024})");
}

// The error of loading `fixture` with its tensors edited by `edit` ("" when it loads).
using Edit = std::function<void(testing::NamedTensors*)>;
std::string EditedLoadError(const std::string& fixture, const Edit& edit) {
  testing::NamedTensors t = testing::FixtureTensors(fixture);
  edit(&t);
  auto m = LoadHfModel(testing::WriteFixtureCopy(fixture, t));
  return m.ok() ? std::string() : m.status().message();
}

std::string ErrorOf(const json& j) {
  auto r = ModelConfig::FromJson(j, "cfg.json");
  return r.ok() ? "" : r.status().message();
}

TEST(GptOssConfig, ReadsTheHubConfig) {
  auto c = ModelConfig::FromJson(HubConfig(), "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->arch, Arch::kGptOss);
  EXPECT_TRUE(c->attention_bias && c->attention_sinks && c->router_logit_bias && c->expert_bias);
  EXPECT_EQ(c->expert_act, ExpertActivation::kGptOssGlu);
  EXPECT_EQ(c->num_experts, 8);
  EXPECT_EQ(c->top_k, 4);
  EXPECT_EQ(c->moe_intermediate_size, 256);
  EXPECT_TRUE(c->norm_topk_prob);
  EXPECT_EQ(c->num_moe_layers(), 4);
  EXPECT_EQ(c->sliding_window, 128);
  for (int64_t l = 0; l < 4; ++l) EXPECT_EQ(c->window(l), l % 2 == 0 ? 128 : 0) << l;
  EXPECT_FALSE(c->qk_norm);
  EXPECT_DOUBLE_EQ(c->rope_theta, 150000);
  EXPECT_TRUE(c->rope_scaling.yarn);
  EXPECT_FALSE(c->rope_scaling.truncate);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor, 0.1 * std::log(32.0) + 1.0);
  EXPECT_DOUBLE_EQ(c->router_aux_loss_coef, 0.9);
  // The CUDA backend runs it (tests/cuda/model_cuda_test.cc), its attention on the fp32 kernels
  // (sinks and windows) and its experts' rows in fp32 (their biases' gradients) in bf16 mode.
  EXPECT_FALSE(PlansBf16Attention(*c, true, true));
  EXPECT_FALSE(PlansRows16(*c, true, false));
}

TEST(GptOssConfig, TransformersDefaultsWhereKeysAreAbsent) {
  json j = HubConfig();
  for (const char* key : {"rope_scaling", "rope_theta", "layer_types", "sliding_window",
                          "attention_bias", "swiglu_limit"})
    j.erase(key);
  auto c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_DOUBLE_EQ(c->rope_theta, 150000);  // GptOssConfig.default_theta
  EXPECT_TRUE(c->rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_FALSE(c->rope_scaling.truncate);
  EXPECT_TRUE(c->attention_bias);
  for (int64_t l = 0; l < 4; ++l) EXPECT_EQ(c->window(l), l % 2 == 0 ? 128 : 0) << l;
  // GptOssConfig's defaults for the keys a hand-written config may leave out.
  for (const char* key :
       {"head_dim", "num_key_value_heads", "rms_norm_eps", "router_aux_loss_coef"})
    j.erase(key);
  c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_DOUBLE_EQ(c->rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c->router_aux_loss_coef, 0.001);
  // No window: every layer must be full attention, as transformers requires.
  j["sliding_window"] = nullptr;
  EXPECT_NE(ErrorOf(j).find("sliding_window is null but layer_types has \"sliding_attention\""),
            std::string::npos)
      << ErrorOf(j);
  j["layer_types"] = {"full_attention", "full_attention", "full_attention", "full_attention"};
  c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  for (int64_t l = 0; l < 4; ++l) EXPECT_EQ(c->window(l), 0) << l;
}

TEST(GptOssConfig, WhatIsNotImplementedIsRefusedByName) {
  json j = HubConfig();
  j["swiglu_limit"] = 8.0;
  EXPECT_NE(ErrorOf(j).find("swiglu_limit 8.0"), std::string::npos) << ErrorOf(j);
  j = HubConfig();
  j["layer_types"] = {"sliding_attention", "full_attention"};
  EXPECT_NE(ErrorOf(j).find("\"layer_types\" must be a list of num_hidden_layers (4)"),
            std::string::npos)
      << ErrorOf(j);
  j = HubConfig();
  j["layer_types"][2] = "chunked_attention";
  EXPECT_NE(ErrorOf(j).find("layer_types[2] \"chunked_attention\" is not implemented"),
            std::string::npos)
      << ErrorOf(j);
  j = HubConfig();
  j["sliding_window"] = 0;
  EXPECT_NE(ErrorOf(j).find("sliding_window"), std::string::npos) << ErrorOf(j);
  j = HubConfig();
  j["attention_dropout"] = 0.1;
  EXPECT_NE(ErrorOf(j).find("attention_dropout"), std::string::npos) << ErrorOf(j);
  // Attention biases remain refused where the model has none.
  json q = HubConfig();
  q["model_type"] = "mixtral";
  q.erase("sliding_window");
  EXPECT_NE(ErrorOf(q).find("attention_bias=true is not implemented for mixtral"),
            std::string::npos)
      << ErrorOf(q);
}

TEST(GptOssConfig, Mxfp4IsReadForGptOssOnly) {
  json j = HubConfig();
  j["quantization_config"] = {{"quant_method", "mxfp4"},
                              {"modules_to_not_convert", {"model.layers.*.self_attn", "lm_head"}}};
  auto c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->mxfp4_experts);
  EXPECT_FALSE(c->ToJson().contains("quantization_config"));  // exports are bf16 or fp32
  j["model_type"] = "mixtral";
  j.erase("sliding_window");
  j["attention_bias"] = false;
  EXPECT_NE(ErrorOf(j).find("\"mxfp4\" is implemented for gpt_oss's experts only, not for mixtral"),
            std::string::npos)
      << ErrorOf(j);
  j = HubConfig();
  j["quantization_config"] = {{"quant_method", "bitsandbytes"}};
  EXPECT_NE(ErrorOf(j).find("quant_method \"bitsandbytes\" is not supported"), std::string::npos)
      << ErrorOf(j);
}

// Every nibble and byte value, scale bytes 0 (subnormal results), 1, 120, 127, 128 and 254
// (overflow to inf): transformers' convert_moe_packed_tensors in float32, bit for bit.
TEST(Mxfp4, DecodesAsTransformersDoes) {
  auto f = SafetensorsFile::Open(testing::DataPath("variants/gpt_oss_mxfp4/decode.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().message();
  for (const std::string prefix : {"", "all_bytes."}) {
    auto blocks = f->Info(prefix + "blocks");
    auto scales = f->Info(prefix + "scales");
    auto values = f->Get(prefix + "values");
    ASSERT_TRUE(blocks.ok() && scales.ok() && values.ok());
    const int64_t rows = blocks->shape[0], groups = blocks->shape[1];
    ASSERT_EQ(values->numel(), rows * groups * 32);
    std::vector<float> out(rows * groups * 32);
    DecodeMxfp4(static_cast<const uint8_t*>(blocks->data),
                static_cast<const uint8_t*>(scales->data), rows, groups, out.data());
    int inf = 0, subnormal = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const float want = values->f32()[i];
      EXPECT_EQ(std::memcmp(&out[i], &want, 4), 0)
          << prefix << i << ": " << out[i] << " vs " << want;
      inf += std::isinf(want);
      subnormal += std::fpclassify(want) == FP_SUBNORMAL;
    }
    if (prefix.empty()) {
      EXPECT_GT(inf, 0);
      EXPECT_GT(subnormal, 0);
    }
  }
}

TEST(GptOssConfig, ToJsonRoundTrips) {
  json j = HubConfig();
  j["layer_types"] = {"full_attention", "sliding_attention", "sliding_attention", "full_attention"};
  j["sliding_window"] = 3;
  auto a = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(a.ok()) << a.status().message();
  const json out = a->ToJson();
  EXPECT_EQ(out["architectures"][0], "GptOssForCausalLM");
  // What transformers' generate reads is kept (the hub's ids).
  EXPECT_EQ(out["eos_token_id"], 200002);
  EXPECT_EQ(out["pad_token_id"], 199999);
  EXPECT_EQ(out["max_position_embeddings"], 131072);
  EXPECT_EQ(a->eos_token_ids, (std::vector<int64_t>{200002}));
  json bad = j;
  bad["eos_token_id"] = {200002, "x"};
  EXPECT_NE(ErrorOf(bad).find("\"eos_token_id\" must be a token id or a list of them"),
            std::string::npos)
      << ErrorOf(bad);
  EXPECT_EQ(out["intermediate_size"], 256);
  auto b = ModelConfig::FromJson(out, "y");
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(b->layer_sliding, a->layer_sliding);
  EXPECT_EQ(b->sliding_window, 3);
  EXPECT_EQ(b->moe_intermediate_size, a->moe_intermediate_size);
  EXPECT_EQ(b->attention_bias, a->attention_bias);
  EXPECT_DOUBLE_EQ(b->rope_scaling.attention_factor, a->rope_scaling.attention_factor);
  EXPECT_EQ(b->rope_scaling.truncate, a->rope_scaling.truncate);
}

TEST(GptOssCheckpoint, ExportGivesBackTheHubTensorsBitForBit) {
  auto model = LoadHfModel(testing::DataPath(kFixture));
  ASSERT_TRUE(model.ok()) << model.status().message();
  const std::string dir = testing::TempDir("gpt_oss_export");
  ASSERT_TRUE(SaveHfModel(**model, dir, ExportDType::kF32).ok());
  auto want = SafetensorsFile::Open(testing::DataPath(kFixture) + "/model.safetensors");
  auto got = SafetensorsFile::Open(dir + "/model.safetensors");
  ASSERT_TRUE(want.ok() && got.ok());
  EXPECT_EQ(got->names(), want->names());  // the stacked names, none of the per-expert ones
  int stacked = 0;
  for (const std::string& name : want->names()) {
    auto a = want->Info(name);
    auto b = got->Info(name);
    ASSERT_TRUE(a.ok() && b.ok()) << name;
    EXPECT_EQ(b->shape, a->shape) << name;
    ASSERT_EQ(b->nbytes, a->nbytes) << name;
    EXPECT_EQ(std::memcmp(a->data, b->data, a->nbytes), 0) << name;
    stacked += name.find("mlp.experts.") != std::string::npos;
  }
  EXPECT_EQ(stacked, 8);  // 2 layers x gate_up_proj, its bias, down_proj, its bias
  // BF16: every weight rounded once, and read back as such.
  const std::string bf = testing::TempDir("gpt_oss_bf16");
  ASSERT_TRUE(SaveHfModel(**model, bf, ExportDType::kBf16).ok());
  auto back = LoadHfModel(bf);
  ASSERT_TRUE(back.ok()) << back.status().message();
  const float* pa = (*model)->params().f32();
  const float* pb = (*back)->params().f32();
  for (int64_t i = 0; i < (*model)->layout().total(); ++i)
    ASSERT_EQ(pb[i], Bf16ToF32(F32ToBf16(pa[i]))) << i;
  // FP8 is refused before anything is written.
  const Status fp8 = SaveHfModel(**model, testing::TempDir("gpt_oss_fp8"), ExportDType::kFp8);
  EXPECT_NE(fp8.message().find("fp8 export of gpt_oss is not implemented"), std::string::npos)
      << fp8.message();
}

TEST(GptOssCheckpoint, AnExpertSliceReadsOnlyItsExperts) {
  auto whole = LoadHfModel(testing::DataPath(kFixture));
  ASSERT_TRUE(whole.ok());
  const ModelConfig& cfg = (*whole)->config();
  const ParamLayout slice(cfg, 2, 2);  // experts 2 and 3 of 5
  int read = 0;
  const Status st = ReadHfWeights(
      testing::DataPath(kFixture), cfg, slice, [&](const ParamInfo& p, const float* data) {
        const ParamInfo* w = (*whole)->layout().Find(p.name);
        ASSERT_NE(w, nullptr) << p.name;
        EXPECT_EQ(std::memcmp(data, (*whole)->params().f32() + w->offset,
                              NumElements(p.shape) * sizeof(float)),
                  0)
            << p.name;
        read += GptOssExpertOf(cfg, p.name).has_value();
      });
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(read, 2 * 2 * 4);  // layers x experts x tensors
}

TEST(GptOssCheckpoint, BadExpertTensorsAreNamed) {
  const std::string gate_up = "model.layers.1.mlp.experts.gate_up_proj";
  auto edited = [&](const Edit& edit) { return EditedLoadError(kFixture, edit); };
  std::string e = edited([&](testing::NamedTensors* t) {
    std::erase_if(*t, [&](const auto& nt) { return nt.first == gate_up; });
  });
  EXPECT_NE(e.find("no tensor \"" + gate_up + "\" (shape [5, 48, 40])"), std::string::npos) << e;
  e = edited([&](testing::NamedTensors* t) {
    for (auto& [name, tensor] : *t)
      if (name == gate_up) tensor = Tensor::Zeros(DType::F32, {5, 40, 48});  // not transposed
  });
  EXPECT_NE(e.find("\"" + gate_up + "\" has shape [5, 40, 48], expected [5, 48, 40]"),
            std::string::npos)
      << e;
  e = edited([&](testing::NamedTensors* t) {
    for (auto& [name, tensor] : *t)
      if (name == gate_up) tensor = Tensor::Zeros(DType::I32, {5, 48, 40});
  });
  EXPECT_NE(e.find("has dtype I32"), std::string::npos) << e;
  // An index spelled with a leading zero is not the writer's: unexpected, not silently skipped.
  e = edited([&](testing::NamedTensors* t) {
    t->emplace_back("model.layers.01.mlp.experts.gate_up_proj",
                    Tensor::Zeros(DType::F32, {5, 48, 40}));
  });
  EXPECT_NE(e.find("unexpected tensor \"model.layers.01.mlp.experts.gate_up_proj\""),
            std::string::npos)
      << e;
  // transformers-4-style per-expert names are not GPT-OSS's: named as unexpected.
  e = edited([&](testing::NamedTensors* t) {
    t->emplace_back("model.layers.0.mlp.experts.0.gate_up_proj",
                    Tensor::Zeros(DType::F32, {40, 48}));
  });
  EXPECT_NE(e.find("unexpected tensor \"model.layers.0.mlp.experts.0.gate_up_proj\""),
            std::string::npos)
      << e;
}

TEST(GptOssCheckpoint, BadMxfp4TensorsAreNamed) {
  constexpr char kMx[] = "variants/gpt_oss_mxfp4";
  const std::string blocks = "model.layers.0.mlp.experts.down_proj_blocks";
  const std::string scales = "model.layers.0.mlp.experts.down_proj_scales";
  auto edited = [&](const Edit& edit) { return EditedLoadError(kMx, edit); };
  EXPECT_EQ(edited([](testing::NamedTensors*) {}), "");  // the copy itself loads
  std::string e = edited([&](testing::NamedTensors* t) {
    std::erase_if(*t, [&](const auto& nt) { return nt.first == scales; });
  });
  EXPECT_NE(e.find("has \"" + blocks + "\" but no \"" + scales + "\" (shape [4, 64, 2])"),
            std::string::npos)
      << e;
  e = edited([&](testing::NamedTensors* t) {
    std::erase_if(*t, [&](const auto& nt) { return nt.first == blocks || nt.first == scales; });
  });
  EXPECT_NE(
      e.find("neither \"" + blocks + "\" (MXFP4) nor \"model.layers.0.mlp.experts.down_proj\""),
      std::string::npos)
      << e;
  e = edited([&](testing::NamedTensors* t) {
    for (auto& [name, tensor] : *t)
      if (name == scales) {
        Tensor bad = Tensor::Empty(DType::I32, {4, 64, 2});
        std::memset(bad.data(), 0, bad.nbytes());
        tensor = bad;
      }
  });
  EXPECT_NE(e.find("\"" + scales + "\" has dtype I32, expected U8"), std::string::npos) << e;
  // Both forms of one tensor, or scales without their blocks: which is meant is unclear.
  e = edited([&](testing::NamedTensors* t) {
    t->emplace_back("model.layers.0.mlp.experts.down_proj",
                    Tensor::Zeros(DType::BF16, {4, 64, 64}));
  });
  EXPECT_NE(e.find("holds both \"model.layers.0.mlp.experts.down_proj\" and"), std::string::npos)
      << e;
  e = edited([&](testing::NamedTensors* t) {
    std::erase_if(*t, [&](const auto& nt) { return nt.first == blocks; });
    t->emplace_back("model.layers.0.mlp.experts.down_proj",
                    Tensor::Zeros(DType::BF16, {4, 64, 64}));
  });
  EXPECT_NE(e.find("has \"" + scales + "\" but no \"" + blocks + "\""), std::string::npos) << e;
  // A scale byte of 255 is MXFP4's NaN: named with its expert and row.
  e = edited([&](testing::NamedTensors* t) {
    for (auto& [name, tensor] : *t)
      if (name == scales) {
        Tensor copy = tensor.Clone();
        static_cast<uint8_t*>(copy.data())[2 * 64 * 2 + 5 * 2] = 255;  // expert 2, row 5
        tensor = copy;
      }
  });
  EXPECT_NE(e.find("expert 2 has scale byte 255 (NaN) at row 5"), std::string::npos) << e;
}

}  // namespace
}  // namespace xt
