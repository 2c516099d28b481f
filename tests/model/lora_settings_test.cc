// LoRA's settings, adapters and layout: which layers a model can adapt (lora.target_modules and
// the routed experts' lora.target_parameters) and what is refused by name, PEFT adapters read
// into any layout (a slice of the experts too) with every mismatch named, and the adapters'
// place and initialisation in the layout. (The arithmetic against PEFT: lora_test.cc.)
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::DataPath;
using testing::TempDir;

// ---------------------------------------------------------------- settings and refusals

ModelConfig Config(const std::string& fixture) {
  auto c = ModelConfig::Load(DataPath(fixture));
  XT_CHECK(c.ok(), c.status().message());
  return *c;
}

LoraSpec Spec(std::vector<std::string> targets, int64_t rank = 4) {
  LoraSpec s;
  s.rank = rank;
  s.alpha = 8;
  s.targets = std::move(targets);
  return s;
}

TEST(LoraSpec, TargetsAreTheModelsLinearLayers) {
  using V = std::vector<std::string>;
  EXPECT_EQ(LoraTargetNames(Config("qwen3_dense_tiny")),
            (V{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}));
  EXPECT_EQ(LoraTargetNames(Config("mixtral_tiny")), (V{"q_proj", "k_proj", "v_proj", "o_proj"}));
  // GPT-OSS's router (mlp.router, not a Linear to PEFT) takes no adapter either.
  EXPECT_EQ(LoraTargetNames(Config("variants/gpt_oss_tiny")),
            (V{"q_proj", "k_proj", "v_proj", "o_proj"}));
  auto oss_all = ResolveLora(Spec({"all-linear"}), Config("variants/gpt_oss_tiny"), "lora");
  ASSERT_TRUE(oss_all.ok()) << oss_all.status().message();  // as PEFT's all-linear on GPT-OSS
  EXPECT_EQ(oss_all->targets, (V{"q_proj", "k_proj", "v_proj", "o_proj"}));
  EXPECT_EQ(LoraTargetNames(Config("deepseek_v3_tiny")),
            (V{"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj", "gate_proj",
               "up_proj", "down_proj"}));
  EXPECT_EQ(SplitLoraTargets(" q_proj,,v_proj ,\tall-linear"),
            (V{"q_proj", "v_proj", "all-linear"}));
  EXPECT_TRUE(SplitLoraTargets(" , ").empty());
  auto all =
      ResolveLora(Spec({"down_proj", "all-linear", "q_proj"}), Config("qwen3_dense_tiny"), "lora");
  ASSERT_TRUE(all.ok()) << all.status().message();
  EXPECT_EQ(all->targets, LoraTargetNames(Config("qwen3_dense_tiny")));
  auto dense_auto = ResolveLora(Spec({"auto"}), Config("qwen3_dense_tiny"), "lora");
  ASSERT_TRUE(dense_auto.ok()) << dense_auto.status().message();
  EXPECT_EQ(dense_auto->targets, LoraTargetNames(Config("qwen3_dense_tiny")));
  auto moe_auto = ResolveLora(Spec({"auto"}), Config("deepseek_v3_tiny"), "lora");
  ASSERT_TRUE(moe_auto.ok()) << moe_auto.status().message();
  EXPECT_EQ(moe_auto->targets,
            (V{"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"}));
  auto some = ResolveLora(Spec({"v_proj", "q_proj", "v_proj"}), Config("qwen3_moe_tiny"), "lora");
  ASSERT_TRUE(some.ok()) << some.status().message();
  EXPECT_EQ(some->targets, (V{"q_proj", "v_proj"}));
  LoraSpec rs = Spec({"q_proj"}, 16);
  rs.rslora = true;
  EXPECT_DOUBLE_EQ(rs.scale(), 8.0 / 4.0);
  EXPECT_DOUBLE_EQ(Spec({"q_proj"}, 16).scale(), 0.5);
}

TEST(LoraSpec, WhatCannotBeAdaptedIsRefusedByName) {
  auto msg = [](LoraSpec s, const std::string& fixture) {
    auto r = ResolveLora(std::move(s), Config(fixture), "lora");
    return r.ok() ? std::string("ok") : r.status().message();
  };
  EXPECT_NE(msg(Spec({"gate_proj"}), "qwen3_moe_tiny").find("routed experts"), std::string::npos);
  EXPECT_NE(msg(Spec({"all-linear"}), "deepseek_v3_tiny").find("routed experts"),
            std::string::npos);
  EXPECT_NE(msg(Spec({"w1"}), "mixtral_tiny").find("\"w1\" is no linear layer"), std::string::npos);
  EXPECT_NE(msg(Spec({"q_proj"}), "deepseek_v3_tiny").find("q_a_proj"), std::string::npos);
  EXPECT_NE(msg(Spec({"lm_head"}), "qwen3_dense_tiny").find("lm_head"), std::string::npos);
  EXPECT_NE(msg(Spec({"gate"}), "qwen3_moe_tiny").find("\"gate\""), std::string::npos);
  EXPECT_NE(msg(Spec({"router"}), "variants/gpt_oss_tiny").find("\"router\""), std::string::npos);
  EXPECT_NE(msg(Spec({}), "qwen3_dense_tiny").find("lora.target_modules is empty"),
            std::string::npos);
  EXPECT_NE(msg(Spec({"q_proj"}, 0), "qwen3_dense_tiny").find("lora.rank"), std::string::npos);
  LoraSpec bad_alpha = Spec({"q_proj"});
  bad_alpha.alpha = -1;
  EXPECT_NE(msg(bad_alpha, "qwen3_dense_tiny").find("lora.alpha"), std::string::npos);
  LoraSpec dropout = Spec({"q_proj"});
  dropout.dropout = 1;
  EXPECT_NE(msg(dropout, "qwen3_dense_tiny").find("lora.dropout must be in [0, 1)"),
            std::string::npos);
  dropout.dropout = 0.9;  // alpha / rank finite in fp32, alpha / rank / (1 - dropout) not
  dropout.alpha = 1e38;
  dropout.rank = 1;
  EXPECT_NE(msg(dropout, "qwen3_dense_tiny").find("keep the scale finite in fp32"),
            std::string::npos);
  dropout.alpha = 8;
  EXPECT_EQ(msg(dropout, "qwen3_dense_tiny"), "ok");
}

// PEFT's target_parameters: the experts' stacked weights by their whole name or a dotted suffix
// of it, every layer's or one layer's (OpenAI's GPT-OSS recipe: "7.mlp.experts.gate_up_proj"),
// every layer's first, then by layer, each once; none where there are no routed experts it
// could mean, or with dropout (which PEFT's ParamWrapper refuses too).
TEST(LoraSpec, ExpertTargetsAreTheExpertsStackedWeights) {
  using V = std::vector<std::string>;
  LoraSpec s = Spec({});
  s.expert_targets = {"mlp.experts.down_proj", "gate_up_proj", "experts.gate_up_proj"};
  auto both = ResolveLora(s, Config("qwen3_moe_tiny"), "lora");
  ASSERT_TRUE(both.ok()) << both.status().message();
  EXPECT_EQ(both->expert_targets, (V{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));
  auto again = ResolveLora(*both, Config("qwen3_moe_tiny"), "lora");  // (convert re-resolves)
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->expert_targets, both->expert_targets);
  EXPECT_TRUE(both->targets.empty());  // the experts alone
  EXPECT_TRUE(both->TargetsExperts(1, "down_proj"));
  s.expert_targets = {"model.layers.1.mlp.experts.gate_up_proj", "1.mlp.experts.down_proj",
                      "layers.1.mlp.experts.down_proj", "down_proj"};
  auto layers = ResolveLora(s, Config("qwen3_moe_tiny"), "lora");
  ASSERT_TRUE(layers.ok()) << layers.status().message();
  EXPECT_EQ(layers->expert_targets, (V{"mlp.experts.down_proj", "1.mlp.experts.gate_up_proj"}));
  EXPECT_FALSE(layers->TargetsExperts(0, "gate_up_proj"));
  EXPECT_TRUE(layers->TargetsExperts(1, "gate_up_proj"));
  EXPECT_TRUE(layers->TargetsExperts(0, "down_proj"));
  again = ResolveLora(*layers, Config("qwen3_moe_tiny"), "lora");
  ASSERT_TRUE(again.ok()) << again.status().message();
  EXPECT_EQ(again->expert_targets, layers->expert_targets);
  s.expert_targets = {"1.mlp.experts.down_proj"};
  EXPECT_FALSE(ResolveLora(s, Config("qwen3_moe_tiny"), "lora")->TargetsExperts(0, "down_proj"));
  // Every MoE layer named one by one is every layer: one spelling for each set of weights.
  s.expert_targets = {"1.mlp.experts.down_proj", "0.mlp.experts.down_proj"};
  EXPECT_EQ(ResolveLora(s, Config("qwen3_moe_tiny"), "lora")->expert_targets,
            (V{"mlp.experts.down_proj"}));
  auto none = ResolveLora(Spec({"auto"}), Config("mixtral_tiny"), "lora");
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->expert_targets.empty());  // "auto" leaves the experts alone

  auto msg = [](LoraSpec s, const std::string& fixture) {
    auto r = ResolveLora(std::move(s), Config(fixture), "lora");
    return r.ok() ? std::string("ok") : r.status().message();
  };
  auto with = [](std::vector<std::string> experts, double dropout = 0) {
    LoraSpec s = Spec({"q_proj"});
    s.expert_targets = std::move(experts);
    s.dropout = dropout;
    return s;
  };
  EXPECT_NE(msg(with({"down_proj"}), "qwen3_dense_tiny").find("it is dense"), std::string::npos);
  EXPECT_EQ(msg(with({"1.mlp.experts.down_proj"}), "variants/gpt_oss_tiny"), "ok");
  EXPECT_NE(msg(with({"7.mlp.experts.down_proj"}), "qwen3_moe_tiny")
                .find("layer 7 is not in the model (it has 2 layers)"),
            std::string::npos);
  // deepseek_v3_tiny's layer 0 is dense (first_k_dense_replace 1)
  LoraSpec dense_layer = with({"0.mlp.experts.down_proj"});
  dense_layer.targets = {"q_a_proj"};
  EXPECT_NE(msg(dense_layer, "deepseek_v3_tiny").find("layer 0 has no routed experts"),
            std::string::npos);
  for (const char* bad :
       {"w2", "experts.down_proj.weight", "shared_experts.gate_proj", "x.mlp.experts.down_proj",
        "1.experts.down_proj", "-1.mlp.experts.down_proj", "model.layers..mlp.experts.down_proj",
        "01.mlp.experts.down_proj", "model.layers.layers.1.mlp.experts.down_proj"})
    EXPECT_NE(msg(with({bad}), "qwen3_moe_tiny")
                  .find("lora.target_parameters: \"" + std::string(bad) + "\" is not"),
              std::string::npos)
        << bad;
  EXPECT_NE(msg(with({"down_proj"}, 0.1), "qwen3_moe_tiny").find("lora.dropout must be 0"),
            std::string::npos);
  // PEFT's gate_proj on a transformers-5 MoE model is its experts, so it points there.
  EXPECT_NE(msg(Spec({"down_proj"}), "qwen3_moe_tiny").find("lora.target_parameters"),
            std::string::npos);
}

// A copy of a fixture adapter with its config edited, or its tensors replaced.
std::string EditedAdapter(const std::string& fixture, const nlohmann::json& config_patch,
                          const std::vector<std::pair<std::string, Tensor>>* tensors = nullptr) {
  const std::string src = DataPath("lora/" + fixture), dir = TempDir("lora_bad");
  std::ifstream in(src + "/adapter_config.json");
  nlohmann::json j = testing::Json(in);
  if (!config_patch.is_null()) j.merge_patch(config_patch);
  std::ofstream(dir + "/adapter_config.json") << DumpJson(j, 2);
  if (tensors) {
    XT_CHECK(WriteSafetensors(dir + "/adapter_model.safetensors", *tensors).ok(), "write");
  } else {
    fs::copy_file(src + "/adapter_model.safetensors", dir + "/adapter_model.safetensors");
  }
  return dir;
}

std::string ReadError(const std::string& adapter, const std::string& base = "qwen3_dense_tiny") {
  auto m = LoadHfModel(DataPath(base), adapter);
  return m.ok() ? std::string("ok") : m.status().message();
}

TEST(LoraAdapter, WhatTheEngineDoesNotImplementIsRefusedByName) {
  using nlohmann::json;
  const std::string f = "qwen3_dense_all";
  EXPECT_EQ(ReadError(EditedAdapter(f, json::object())), "ok");
  EXPECT_NE(ReadError(EditedAdapter(f, {{"use_dora", true}})).find("use_dora is true"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"peft_type", "IA3"}})).find("peft_type"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"bias", "all"}})).find("bias"), std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"fan_in_fan_out", true}})).find("fan_in_fan_out"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"modules_to_save", {"lm_head"}}})).find("modules_to_save"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"rank_pattern", {{"q_proj", 8}}}})).find("rank_pattern"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"target_parameters", {"gate_up_proj"}}}))
                .find("target_parameters"),
            std::string::npos);
  EXPECT_NE(ReadError(EditedAdapter(f, {{"r", "four"}})).find("integer \"r\""), std::string::npos);
  // Adapters made for a changed base (PiSSA, OLoRA), and aLoRA's activation tokens.
  EXPECT_NE(ReadError(EditedAdapter(f, {{"init_lora_weights", "pissa"}})).find("init_lora_weights"),
            std::string::npos);
  EXPECT_EQ(ReadError(EditedAdapter(f, {{"init_lora_weights", "gaussian"}})), "ok");
  EXPECT_EQ(ReadError(EditedAdapter(f, {{"init_lora_weights", "eva"}})), "ok");  // base unchanged
  EXPECT_NE(ReadError(EditedAdapter(f, {{"alora_invocation_tokens", {5, 6}}}))
                .find("alora_invocation_tokens"),
            std::string::npos);
  // No adapter there, or only a pickled one.
  const std::string none = TempDir("lora_none");
  EXPECT_NE(ReadError(none + "/missing").find("no such PEFT adapter"), std::string::npos);
  const std::string bin = EditedAdapter(f, json::object());
  fs::rename(bin + "/adapter_model.safetensors", bin + "/adapter_model.bin");
  EXPECT_NE(ReadError(bin).find("adapter_model.bin (pickle) is not read"), std::string::npos);
}

TEST(LoraAdapter, MissingExtraOrMisshapenTensorsAreNamed) {
  const std::string f = "qwen3_dense_all";
  auto file = SafetensorsFile::Open(DataPath("lora/" + f + "/adapter_model.safetensors"));
  ASSERT_TRUE(file.ok());
  std::vector<std::pair<std::string, Tensor>> all;
  for (const std::string& n : file->names()) all.emplace_back(n, *file->Get(n));
  const std::string q = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";

  // One layer's q_proj adapter missing: the targets still hold q_proj, so that tensor is named.
  auto missing = all;
  std::erase_if(missing, [&](const auto& t) { return t.first == q; });
  const std::string no_tensor = ReadError(EditedAdapter(f, {}, &missing));
  EXPECT_NE(no_tensor.find("adapter has no tensor \"" + q + "\""), std::string::npos) << no_tensor;

  auto extra = all;
  extra.emplace_back("base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight",
                     Tensor::Zeros(DType::F32, {4, 64}));
  const std::string unexpected = ReadError(EditedAdapter(f, {}, &extra));
  EXPECT_NE(unexpected.find("unexpected tensor"), std::string::npos) << unexpected;

  auto misshapen = all;
  for (auto& [n, t] : misshapen)
    if (n == q) t = Tensor::Zeros(DType::F32, {64, 5});
  const std::string shape = ReadError(EditedAdapter(f, {}, &misshapen));
  EXPECT_NE(shape.find(q), std::string::npos) << shape;

  // Settings that disagree with the run's (a run's lora.rank against the adapter's r).
  auto model = ModelConfig::Load(DataPath("qwen3_dense_tiny"));
  ASSERT_TRUE(model.ok());
  ModelConfig c = *model;
  auto spec = LoraSpecOfAdapter(DataPath("lora/" + f), c);
  ASSERT_TRUE(spec.ok());
  c.lora = *spec;
  c.lora.rank = 8;
  const ParamLayout layout(c);
  Status st =
      ReadLoraAdapter(DataPath("lora/" + f), c, layout, [](const ParamInfo&, const float*) {});
  EXPECT_NE(st.message().find("r is 4, but lora.rank is 8"), std::string::npos) << st.message();
  c.lora.rank = 4;
  c.lora.alpha = 16;
  st = ReadLoraAdapter(DataPath("lora/" + f), c, ParamLayout(c),
                       [](const ParamInfo&, const float*) {});
  EXPECT_NE(st.message().find("lora_alpha"), std::string::npos) << st.message();
}

// PEFT's initialisation: A uniform within +-1/sqrt(in), B zero; the layout's adapters follow the
// layer's other weights, and are the only parameters not frozen.
TEST(LoraLayout, AdaptersAreInitialisedAsPeftAndAloneTrain) {
  ModelConfig c = Config("qwen3_dense_tiny");
  auto spec = ResolveLora(Spec({"q_proj", "down_proj"}), c, "lora");
  ASSERT_TRUE(spec.ok());
  c.lora = *spec;
  const ParamLayout layout(c);
  int adapters = 0;
  for (const ParamInfo& p : layout.params()) {
    EXPECT_EQ(p.frozen, !p.lora) << p.name;
    if (!p.lora) continue;
    ++adapters;
    std::vector<float> w(NumElements(p.shape), 7.0f);
    InitLoraTensor(p, 42, w.data());
    const bool is_a = p.name.find("lora_A") != std::string::npos;
    const float bound = 1.0f / std::sqrt(float(p.shape[1]));
    float largest = 0;
    for (float v : w) {
      if (!is_a) {
        EXPECT_EQ(v, 0.0f);
      }
      largest = std::max(largest, std::fabs(v));
    }
    if (is_a) {
      EXPECT_LE(largest, bound);
      EXPECT_GT(largest, 0.8f * bound);
    }
  }
  EXPECT_EQ(adapters, 2 * 2 * 2);  // 2 layers x 2 targets x (A, B)
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const ParamUnit& t = layout.trainable(ParamLayout::LayerUnit(l));
    EXPECT_EQ(t.size(), (4 * 64 + 64 * 4) + (4 * 96 + 64 * 4));  // q_proj, down_proj
    EXPECT_EQ(t.end, layout.units()[ParamLayout::LayerUnit(l)].end);
  }
  EXPECT_EQ(layout.trainable(0).size(), 0);
  EXPECT_EQ(layout.trainable(layout.head_unit()).size(), 0);
}

// The experts' adapters: per expert (named by its global index), each kind stacked over the
// layout's experts as their weights are, right after the layer's other adapters (one trainable
// range), and only the layout's experts' under expert parallelism; initialised as PEFT does
// (A's bound from its input width).
TEST(LoraLayout, ExpertAdaptersAreStackedOverTheLayoutsExperts) {
  ModelConfig c = Config("qwen3_moe_tiny");  // E 8, H 64, I 32
  LoraSpec s = Spec({"q_proj"}, 2);
  s.expert_targets = {"gate_up_proj", "down_proj"};
  auto spec = ResolveLora(s, c, "lora");
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  c.lora = *spec;
  for (const auto& [first, count] : {std::pair<int64_t, int64_t>{0, 8}, {2, 4}}) {
    const ParamLayout layout(c, first, count);
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const LayerOffsets& o = layout.layers[l];
      const ParamInfo* a0 = layout.Find(ExpertAdapterName(c, l, first, "gate_up_proj", "lora_A"));
      const ParamInfo* b1 = layout.Find(ExpertAdapterName(c, l, first + 1, "down_proj", "lora_B"));
      ASSERT_TRUE(a0 && b1);
      EXPECT_EQ(a0->offset, o.gate_up_lora_a);
      EXPECT_EQ(a0->shape, (Shape{2, 64}));
      EXPECT_EQ(b1->offset, o.down_lora_b + 64 * 2);  // expert first + 1's B (H, r)
      EXPECT_EQ(o.gate_up_lora_b - o.gate_up_lora_a, count * 2 * 64);
      EXPECT_EQ(o.down_lora_a - o.gate_up_lora_b, count * 64 * 2);
      EXPECT_EQ(layout.Find(ExpertAdapterName(c, l, first + count, "down_proj", "lora_A")),
                nullptr);
      const ParamUnit& t = layout.trainable(ParamLayout::LayerUnit(l));
      EXPECT_EQ(t.begin, o.lora[0].a);  // q_proj's, then the experts'
      EXPECT_EQ(t.end, o.gate_up);      // the experts' weights after
      // q_proj's A (2, 64) and B (64, 2); each expert's A (2, 64), B (64, 2), A (2, 32), B (64, 2)
      EXPECT_EQ(t.size(), 2 * 64 * 2 + count * (2 * 64 + 64 * 2 + 2 * 32 + 64 * 2));
      std::vector<float> w(NumElements(a0->shape));
      InitLoraTensor(*a0, 42, w.data());
      float largest = 0;
      for (float v : w) largest = std::max(largest, std::fabs(v));
      EXPECT_LE(largest, 1.0f / std::sqrt(64.0f));
      EXPECT_GT(largest, 0.0f);
    }
  }
}

// An adapter with the experts' adapters reads into a slice of the experts (expert parallelism)
// as the whole model's layout reads it; what disagrees with the run is refused by name.
TEST(LoraAdapter, ExpertAdaptersReadIntoAnySliceOfTheExperts) {
  const std::string f = DataPath("lora/qwen3_moe_experts");
  ModelConfig c = Config("qwen3_moe_tiny");
  auto spec = LoraSpecOfAdapter(f, c);
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  c.lora = *spec;
  EXPECT_EQ(c.lora.expert_targets,
            (std::vector<std::string>{"mlp.experts.gate_up_proj", "mlp.experts.down_proj"}));
  std::map<std::string, std::vector<float>> whole;
  ASSERT_TRUE(ReadLoraAdapter(f, c, ParamLayout(c), [&](const ParamInfo& p, const float* d) {
                whole[p.name].assign(d, d + NumElements(p.shape));
              }).ok());
  EXPECT_EQ(int64_t(whole.size()), 2 * 2 * (1 + 1) + 2 * 2 * 2 * 8);  // attention, experts
  int sliced = 0;
  Status st = ReadLoraAdapter(f, c, ParamLayout(c, 4, 2), [&](const ParamInfo& p, const float* d) {
    ++sliced;
    ASSERT_TRUE(whole.count(p.name)) << p.name;
    EXPECT_EQ(std::vector<float>(d, d + NumElements(p.shape)), whole[p.name]) << p.name;
  });
  ASSERT_TRUE(st.ok()) << st.message();
  EXPECT_EQ(sliced, 2 * 2 * 2 + 2 * 2 * 2 * 2);

  // The run's target_parameters differ from the adapter's.
  ModelConfig other = c;
  other.lora.expert_targets = {"mlp.experts.down_proj"};
  st = ReadLoraAdapter(f, other, ParamLayout(other), [](const ParamInfo&, const float*) {});
  EXPECT_NE(st.message().find("but lora.target_parameters is [\"mlp.experts.down_proj\"]"),
            std::string::npos)
      << st.message();
  // target_parameters that is no list of names, read for a model or into a run's layout.
  for (const nlohmann::json& tp :
       {nlohmann::json("mlp.experts.down_proj"), nlohmann::json({5, "mlp.experts.down_proj"})}) {
    const std::string edited = EditedAdapter("qwen3_moe_experts", {{"target_parameters", tp}});
    const std::string loaded = ReadError(edited, "qwen3_moe_tiny");
    EXPECT_NE(loaded.find("target_parameters must be a list of names"), std::string::npos)
        << loaded;
    st = ReadLoraAdapter(edited, c, ParamLayout(c), [](const ParamInfo&, const float*) {});
    EXPECT_NE(st.message().find("target_parameters must be a list of names"), std::string::npos)
        << st.message();
  }
  // A stacked tensor missing, or of another shape.
  auto file = SafetensorsFile::Open(f + "/adapter_model.safetensors");
  ASSERT_TRUE(file.ok());
  const std::string a = "base_model.model.model.layers.1.mlp.experts.base_layer.lora_A.weight";
  std::vector<std::pair<std::string, Tensor>> missing, misshapen;
  for (const std::string& n : file->names()) {
    if (n != a) missing.emplace_back(n, *file->Get(n));
    misshapen.emplace_back(n, n == a ? Tensor::Zeros(DType::F32, {8 * 2, 63}) : *file->Get(n));
  }
  const std::string no_tensor =
      ReadError(EditedAdapter("qwen3_moe_experts", {}, &missing), "qwen3_moe_tiny");
  EXPECT_NE(no_tensor.find("adapter has no tensor \"" + a + "\" (shape [16, 64])"),
            std::string::npos)
      << no_tensor;
  const std::string shape =
      ReadError(EditedAdapter("qwen3_moe_experts", {}, &misshapen), "qwen3_moe_tiny");
  EXPECT_NE(shape.find(a), std::string::npos) << shape;
}

}  // namespace
}  // namespace xt
