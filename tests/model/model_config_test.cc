// config.json parsing: both transformers spellings, sparse-layer rules, and clear errors.
#include "xtuner/model/config.h"

#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/model/rope_tables.h"

namespace xt {
namespace {

using nlohmann::json;

json Qwen3MoeV5() {
  return testing::Json(R"({
    "model_type": "qwen3_moe", "vocab_size": 320, "hidden_size": 64, "num_hidden_layers": 4,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
    "moe_intermediate_size": 32, "num_local_experts": 8, "num_experts_per_tok": 2,
    "norm_topk_prob": true, "decoder_sparse_step": 1, "mlp_only_layers": [],
    "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}, "rms_norm_eps": 1e-6,
    "router_aux_loss_coef": 0.01, "tie_word_embeddings": false, "hidden_act": "silu",
    "attention_bias": false, "use_sliding_window": false, "sliding_window": null})");
}

std::string ErrorOf(const json& j) {
  auto r = ModelConfig::FromJson(j, "cfg.json");
  return r.ok() ? "" : r.status().message();
}

TEST(ModelConfig, ReadsTheFixtures) {
  auto moe = ModelConfig::Load(testing::DataPath("qwen3_moe_tiny"));
  ASSERT_TRUE(moe.ok()) << moe.status().message();
  EXPECT_EQ(moe->arch, Arch::kQwen3Moe);
  EXPECT_EQ(moe->num_experts, 8);
  EXPECT_EQ(moe->top_k, 2);
  EXPECT_TRUE(moe->qk_norm);
  EXPECT_EQ(moe->num_moe_layers(), 2);
  auto mix = ModelConfig::Load(testing::DataPath("mixtral_tiny"));
  ASSERT_TRUE(mix.ok()) << mix.status().message();
  EXPECT_EQ(mix->num_experts, 4);
  EXPECT_FALSE(mix->qk_norm);
  EXPECT_TRUE(mix->norm_topk_prob);
  EXPECT_DOUBLE_EQ(mix->rope_theta, 1e6);
  EXPECT_EQ(mix->moe_intermediate_size, 48);
  auto dense = ModelConfig::Load(testing::DataPath("qwen3_dense_tiny"));
  ASSERT_TRUE(dense.ok()) << dense.status().message();
  EXPECT_FALSE(dense->is_moe());
  EXPECT_EQ(dense->num_moe_layers(), 0);
}

TEST(ModelConfig, TransformersV4SpellingsGiveTheSameConfig) {
  json v4 = Qwen3MoeV5();
  v4.erase("num_local_experts");
  v4["num_experts"] = 8;
  v4.erase("rope_parameters");
  v4["rope_theta"] = 1000000;  // an integer, as some hub configs write it
  v4["rope_scaling"] = nullptr;
  auto a = ModelConfig::FromJson(Qwen3MoeV5(), "v5");
  auto b = ModelConfig::FromJson(v4, "v4");
  ASSERT_TRUE(a.ok() && b.ok()) << b.status().message();
  EXPECT_EQ(b->num_experts, 8);
  EXPECT_DOUBLE_EQ(b->rope_theta, 1e6);
  EXPECT_DOUBLE_EQ(a->rope_theta, 1e4);
}

TEST(ModelConfig, SparseLayersFollowStepAndMlpOnlyLayers) {
  json j = Qwen3MoeV5();
  j["decoder_sparse_step"] = 2;
  j["mlp_only_layers"] = {3};
  auto c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok()) << c.status().message();
  // transformers: sparse iff layer not in mlp_only_layers and (layer + 1) % step == 0.
  EXPECT_EQ(c->layer_is_moe, (std::vector<bool>{false, true, false, false}));
}

TEST(ModelConfig, HeadDimDefaultsToHiddenOverHeads) {
  json j = Qwen3MoeV5();
  j.erase("head_dim");
  auto c = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(c.ok());
  EXPECT_EQ(c->head_dim, 16);
}

TEST(ModelConfig, ErrorsNameTheFileKeyAndWhatIsSupported) {
  json j = Qwen3MoeV5();
  j["model_type"] = "llama";
  EXPECT_NE(ErrorOf(j).find("cfg.json: model_type \"llama\" is not supported (supported: qwen3, "
                            "qwen3_moe, mixtral, deepseek_v3, gpt_oss)"),
            std::string::npos);
  j = Qwen3MoeV5();
  j["rope_parameters"] = {{"rope_type", "dynamic"}, {"rope_theta", 1e4}, {"factor", 4.0}};
  EXPECT_NE(ErrorOf(j).find("\"dynamic\" is not implemented; supported: \"default\" (no "
                            "scaling), \"yarn\""),
            std::string::npos)
      << ErrorOf(j);
  j = Qwen3MoeV5();
  j.erase("rope_parameters");
  j["rope_theta"] = 1e4;
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  EXPECT_NE(ErrorOf(j).find("rope_scaling type \"linear\" is not implemented"), std::string::npos);
  j = Qwen3MoeV5();
  j.erase("hidden_size");
  EXPECT_NE(ErrorOf(j).find("cfg.json: missing required key \"hidden_size\""), std::string::npos);
  j = Qwen3MoeV5();
  j["num_attention_heads"] = "four";
  EXPECT_NE(ErrorOf(j).find("\"num_attention_heads\" must be an integer"), std::string::npos);
  j = Qwen3MoeV5();
  j["num_key_value_heads"] = 3;
  EXPECT_NE(ErrorOf(j).find("must be a multiple of num_key_value_heads"), std::string::npos);
  j = Qwen3MoeV5();
  j["num_experts_per_tok"] = 9;
  EXPECT_NE(ErrorOf(j).find("exceeds the expert count"), std::string::npos);
  j = Qwen3MoeV5();
  j.erase("num_local_experts");
  EXPECT_NE(ErrorOf(j).find("num_local_experts"), std::string::npos);
  j = Qwen3MoeV5();
  j["attention_bias"] = true;
  EXPECT_NE(ErrorOf(j).find("attention_bias=true is not implemented"), std::string::npos);
  j = Qwen3MoeV5();
  j["attention_dropout"] = 0.1;
  EXPECT_NE(ErrorOf(j).find("attention_dropout != 0 is not implemented (supported: 0)"),
            std::string::npos);
  j = Qwen3MoeV5();
  j["hidden_act"] = "gelu";
  EXPECT_NE(ErrorOf(j).find("hidden_act \"gelu\""), std::string::npos);
  j = Qwen3MoeV5();
  j["mlp_only_layers"] = {7};
  EXPECT_NE(ErrorOf(j).find("mlp_only_layers entry 7"), std::string::npos);
  json mix = Qwen3MoeV5();
  mix["model_type"] = "mixtral";
  mix["intermediate_size"] = 0;
  EXPECT_NE(ErrorOf(mix).find("intermediate_size"), std::string::npos) << ErrorOf(mix);
  EXPECT_NE(ErrorOf(json::array()).find("must be a JSON object"), std::string::npos);
}

// Sizes no model has are refused before anything is allocated (a typo of a few digits would
// otherwise run the machine out of memory laying out a trillion experts).
TEST(ModelConfig, AbsurdSizesAreRefusedByName) {
  json j = Qwen3MoeV5();
  j["num_local_experts"] = 100000;
  EXPECT_NE(ErrorOf(j).find("cfg.json: the expert count 100000 is larger than xtuner supports "
                            "(65536)"),
            std::string::npos)
      << ErrorOf(j);
  j = Qwen3MoeV5();
  j["hidden_size"] = int64_t(1) << 25;
  EXPECT_NE(ErrorOf(j).find("hidden_size 33554432 is larger than xtuner supports (16777216)"),
            std::string::npos)
      << ErrorOf(j);
  // No size needs more than 31 bits: larger integers (or their wrapped unsigned forms) are
  // refused as they are read, before anything is made per layer or expert.
  for (json big : {json(int64_t(1) << 40), json(uint64_t(18446744073709551615ull)), json(1e15)}) {
    j = Qwen3MoeV5();
    j["num_hidden_layers"] = big;
    EXPECT_NE(ErrorOf(j).find("\"num_hidden_layers\" must be an integer of at most 2^31 - 1 in "
                              "size, found " +
                              DumpJson(big)),
              std::string::npos)
        << ErrorOf(j);
  }
  j = Qwen3MoeV5();
  j["num_hidden_layers"] = 100000;
  EXPECT_NE(ErrorOf(j).find("num_hidden_layers 100000 is larger than xtuner supports (65536)"),
            std::string::npos)
      << ErrorOf(j);
  j = Qwen3MoeV5();
  j["num_local_experts"] = 60000;
  j["num_hidden_layers"] = 100;
  EXPECT_NE(ErrorOf(j).find("60000 experts in each of 100 MoE layers are more than xtuner "
                            "supports"),
            std::string::npos)
      << ErrorOf(j);
  j = Qwen3MoeV5();
  j["hidden_size"] = 1e300;
  EXPECT_NE(ErrorOf(j).find("\"hidden_size\" must be an integer of at most 2^31 - 1 in size, "
                            "found 1e+300"),
            std::string::npos)
      << ErrorOf(j);
  // Wrong JSON types where a string belongs, and derived values that cannot be.
  j = Qwen3MoeV5();
  j["hidden_act"] = 5;
  EXPECT_NE(ErrorOf(j).find("key \"hidden_act\" must be a string, found 5"), std::string::npos);
  j = Qwen3MoeV5();
  j["rope_parameters"]["rope_type"] = json::array();
  EXPECT_NE(ErrorOf(j).find("rope_type must be a string, found []"), std::string::npos)
      << ErrorOf(j);
  j = Qwen3MoeV5();
  j["rope_parameters"] = {{"rope_type", "yarn"},
                          {"rope_theta", 1e4},
                          {"factor", 4.0},
                          {"original_max_position_embeddings", 1e300}};
  EXPECT_NE(ErrorOf(j).find("yarn needs original_max_position_embeddings"), std::string::npos)
      << ErrorOf(j);
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e4},
                          {"factor", 4.0},       {"original_max_position_embeddings", 32},
                          {"mscale", -20.0},     {"mscale_all_dim", 1.0}};
  EXPECT_NE(ErrorOf(j).find("give an attention factor of"), std::string::npos) << ErrorOf(j);
  j = Qwen3MoeV5();
  j["hidden_size"] = 64.0;  // a whole float is an integer
  EXPECT_EQ(ErrorOf(j), "");
  j = Qwen3MoeV5();
  j["vocab_size"] = 10000000;
  j["hidden_size"] = 16000000;
  EXPECT_NE(ErrorOf(j).find("the model would have about 3.2e+14 parameters, more than xtuner "
                            "supports (2^48)"),
            std::string::npos)
      << ErrorOf(j);
  // The largest hub configs pass (DeepSeek-V3: examples/configs, deepseek_v3_test).
  j = Qwen3MoeV5();
  j["vocab_size"] = 151936;
  j["hidden_size"] = 4096;
  j["num_local_experts"] = 128;
  j["num_hidden_layers"] = 94;
  EXPECT_EQ(ErrorOf(j), "");
}

TEST(ModelConfig, LoadReportsMissingAndInvalidFiles) {
  auto r = ModelConfig::Load("/nonexistent/dir");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("/nonexistent/dir"), std::string::npos);
  std::string dir = testing::TempDir("cfg");
  FILE* f = std::fopen((dir + "/config.json").c_str(), "w");
  std::fputs("{\"model_type\": ", f);
  std::fclose(f);
  r = ModelConfig::Load(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("config.json: not valid JSON"), std::string::npos);
}

// YaRN in the transformers-5 spelling on a Qwen3-MoE: cos and sin grow by 0.1 ln(factor) + 1,
// the softmax scale stays 1 / sqrt(head_dim), and a missing original context means
// max_position_embeddings.
TEST(ModelConfig, ReadsYarn) {
  json j = Qwen3MoeV5();
  j["max_position_embeddings"] = 4096;
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}};
  auto c = ModelConfig::FromJson(j, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->rope_scaling.yarn);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor, 0.1 * std::log(4.0) + 1.0);
  EXPECT_DOUBLE_EQ(c->softmax_scale(), 1.0 / std::sqrt(16.0));
  Batch b = *Batch::FromRows({1, 2, 3}, {}, 1, 3);
  std::vector<float> cos, sin;
  ComputeRopeTables(b, *c, &cos, &sin);
  EXPECT_FLOAT_EQ(cos[0], float(c->rope_scaling.attention_factor));  // position 0: cos 1
  EXPECT_FLOAT_EQ(sin[0], 0.0f);
  // attention_factor given wins; a null factor comes from the two contexts.
  j["rope_parameters"] = {{"rope_type", "yarn"},
                          {"rope_theta", 1e6},
                          {"factor", nullptr},
                          {"attention_factor", 0.5},
                          {"original_max_position_embeddings", 1024}};
  c = ModelConfig::FromJson(j, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 4.0);
  EXPECT_DOUBLE_EQ(c->rope_scaling.attention_factor, 0.5);
  // As transformers reads them: a top-level original context wins over the object's; truncate
  // null means false; rope_scaling, when set, replaces rope_parameters, whose own rope_theta wins
  // over the top-level one.
  json k = j;
  k["original_max_position_embeddings"] = 512;
  k["rope_parameters"]["truncate"] = nullptr;
  c = ModelConfig::FromJson(k, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 512);
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 8.0);
  EXPECT_FALSE(c->rope_scaling.truncate);
  k = Qwen3MoeV5();
  k["rope_theta"] = 1e4;
  k["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 5e5}};
  c = ModelConfig::FromJson(k, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_DOUBLE_EQ(c->rope_theta, 5e5);
  EXPECT_FALSE(c->rope_scaling.yarn);
  k["max_position_embeddings"] = 4096;
  k["rope_scaling"] = {{"type", "yarn"}, {"factor", 2.0}};
  c = ModelConfig::FromJson(k, "cfg.json");
  ASSERT_TRUE(c.ok()) << c.status().message();
  EXPECT_TRUE(c->rope_scaling.yarn);
  EXPECT_DOUBLE_EQ(c->rope_theta, 1e4);  // rope_scaling has none: the top-level one
  j["rope_parameters"]["partial_rotary_factor"] = 0.5;
  EXPECT_NE(ErrorOf(j).find("partial_rotary_factor is not implemented"), std::string::npos);
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}};
  EXPECT_NE(ErrorOf(j).find("yarn needs \"factor\""), std::string::npos) << ErrorOf(j);
  j["rope_parameters"] = {
      {"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}, {"attention_factor", 0}};
  EXPECT_NE(ErrorOf(j).find("attention_factor must be positive"), std::string::npos);
  j.erase("max_position_embeddings");
  j["rope_parameters"] = {{"rope_type", "yarn"}, {"rope_theta", 1e6}, {"factor", 4.0}};
  EXPECT_NE(ErrorOf(j).find("yarn needs original_max_position_embeddings"), std::string::npos);
}

TEST(ModelConfig, ToJsonRoundTrips) {
  json j = Qwen3MoeV5();
  j["mlp_only_layers"] = {0, 2};
  auto a = ModelConfig::FromJson(j, "x");
  ASSERT_TRUE(a.ok());
  auto b = ModelConfig::FromJson(a->ToJson(), "y");
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(a->layer_is_moe, b->layer_is_moe);
  EXPECT_EQ(a->num_experts, b->num_experts);
  EXPECT_EQ(a->norm_topk_prob, b->norm_topk_prob);
  EXPECT_DOUBLE_EQ(a->rope_theta, b->rope_theta);
}

}  // namespace
}  // namespace xt
