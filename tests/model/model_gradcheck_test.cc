// The assembled models against finite differences, on configurations the HF fixtures do not
// cover: tied embeddings, norm_topk_prob=false, top-1 and top-E routing, MQA, dense layers mixed
// with MoE layers, several packed documents, DeepSeek-V3's attention and router variants, LoRA
// adapters (every base weight frozen: exactly zero gradients, the adapters checked; with
// dropout, the training pass under fixed masks), GPT-OSS's
// biases, sinks, sliding window and clamped GLU. Each
// parameter tensor is checked at the elements with the largest gradients, where fp32 round-off in
// the loss is small next to the signal.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "util/testing.h"
#include "xtuner/model/lora.h"
#include "xtuner/model/transformer.h"

namespace xt {
namespace {

using nlohmann::json;

struct Case {
  const char* name;
  json cfg;
  LoraSpec lora;  // rank 0: none
  // Of the random weights. (GPT-OSS's cases use 1: at 7 its router margins are so narrow that
  // most perturbations change some token's experts.)
  uint64_t seed = 7;
};

LoraSpec Lora(int64_t rank, double alpha, bool rslora, std::vector<std::string> targets,
              double dropout = 0, std::vector<std::string> experts = {}) {
  LoraSpec s;
  s.expert_targets = std::move(experts);
  s.dropout = dropout;
  s.rank = rank;
  s.alpha = alpha;
  s.rslora = rslora;
  s.targets = std::move(targets);
  return s;
}

json Base(const char* model_type) {
  return json{{"model_type", model_type},
              {"vocab_size", 37},
              {"hidden_size", 24},
              {"num_hidden_layers", 2},
              {"num_attention_heads", 4},
              {"num_key_value_heads", 2},
              {"head_dim", 8},
              {"intermediate_size", 20},
              {"rms_norm_eps", 1e-6},
              {"rope_theta", 10000.0}};
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  json dense = Base("qwen3");
  dense["tie_word_embeddings"] = true;
  dense["num_key_value_heads"] = 1;
  cases.push_back({"qwen3_tied_mqa", dense, {}});
  json moe = Base("qwen3_moe");
  moe.update(json{{"num_experts", 5},
                  {"num_experts_per_tok", 2},
                  {"moe_intermediate_size", 12},
                  {"norm_topk_prob", false},
                  {"router_aux_loss_coef", 0.1},
                  {"decoder_sparse_step", 1},
                  {"mlp_only_layers", {0}}});
  cases.push_back({"qwen3_moe_unnormalised_mixed_layers", moe, {}});
  json all = moe;
  all["num_experts"] = 3;
  all["num_experts_per_tok"] = 3;
  all["norm_topk_prob"] = true;
  all["mlp_only_layers"] = json::array();
  cases.push_back({"qwen3_moe_k_equals_E", all, {}});
  json mix = Base("mixtral");
  mix.update(json{{"num_local_experts", 4},
                  {"num_experts_per_tok", 1},
                  {"router_aux_loss_coef", 0.05},
                  {"tie_word_embeddings", true}});
  cases.push_back({"mixtral_top1_tied", mix, {}});
  // DeepSeek-V3: multi-head latent attention (q through its low-rank path or a plain q_proj;
  // interleaved RoPE pairs or not), a dense first layer, the sigmoid group-limited router with
  // shared experts. The correction bias (random here: RandomInit) has no gradient to check.
  json ds = Base("deepseek_v3");
  ds.update(json{{"num_key_value_heads", 4},
                 {"q_lora_rank", 12},
                 {"kv_lora_rank", 10},
                 {"qk_nope_head_dim", 6},
                 {"qk_rope_head_dim", 4},
                 {"v_head_dim", 5},
                 {"n_routed_experts", 6},
                 {"num_experts_per_tok", 2},
                 {"moe_intermediate_size", 8},
                 {"n_shared_experts", 1},
                 {"n_group", 3},
                 {"topk_group", 2},
                 {"routed_scaling_factor", 2.5},
                 {"first_k_dense_replace", 1},
                 {"rope_interleave", true}});
  cases.push_back({"deepseek_v3_mla_groups", ds, {}});
  json ds_plain = ds;
  ds_plain.update(json{{"q_lora_rank", nullptr},
                       {"rope_interleave", false},
                       {"norm_topk_prob", false},
                       {"n_shared_experts", 2},
                       {"first_k_dense_replace", 0},
                       {"tie_word_embeddings", true}});
  cases.push_back({"deepseek_v3_plain_q_unnormalised_tied", ds_plain, {}});
  // LoRA: every linear layer of a dense model (gate_proj and up_proj: two adapters of one fused
  // weight); MLA's projections, rank-stabilised.
  cases.push_back({"qwen3_lora_all_linear", Base("qwen3"), Lora(3, 6.0, false, {"all-linear"})});
  cases.push_back(
      {"deepseek_v3_lora_mla_rslora", ds,
       Lora(2, 3.0, true, {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"})});
  // GPT-OSS: biases on attention, router and experts, attention sinks, a sliding window of 3
  // keys on the first layer (documents of 5 and 7 tokens), the clamped GLU, YaRN RoPE (its
  // defaults); and LoRA on its biased attention projections.
  json oss = Base("gpt_oss");
  oss.erase("rope_theta");
  oss.update(json{{"num_local_experts", 4},
                  {"num_experts_per_tok", 2},
                  {"intermediate_size", 10},
                  {"sliding_window", 3},
                  {"layer_types", {"sliding_attention", "full_attention"}},
                  {"router_aux_loss_coef", 0.2}});
  cases.push_back({"gpt_oss_sinks_window_biases", oss, {}, 1});
  cases.push_back({"gpt_oss_lora_attention", oss, Lora(2, 4.0, false, {"auto"}), 1});
  // ... and on its experts (their biases and clamped GLU), layer 1's gate_up and every layer's
  // down, as OpenAI's recipe names them by layer.
  cases.push_back({"gpt_oss_lora_experts_by_layer", oss,
                   Lora(2, 4.0, false, {"q_proj"}, 0, {"1.mlp.experts.gate_up_proj", "down_proj"}),
                   1});
  // LoRA's dropout: with the batch's noise keys fixed, the training pass is a smooth function of
  // the adapters, whose masked inputs and input gradients the checks cross.
  cases.push_back(
      {"qwen3_lora_all_linear_dropout", Base("qwen3"), Lora(3, 6.0, false, {"all-linear"}, 0.3)});
  cases.push_back({"qwen3_moe_lora_attention_dropout", moe, Lora(2, 4.0, false, {"auto"}, 0.5)});
  cases.push_back(
      {"deepseek_v3_lora_mla_dropout", ds,
       Lora(2, 3.0, false, {"q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"},
            0.2)});
  // LoRA on the routed experts (PEFT's target_parameters): both weights beside q_proj, with a
  // dense first layer; Mixtral's down_proj alone, top-1; DeepSeek-V3's gate_up_proj beside its
  // shared experts and the sigmoid router, rank-stabilised, with q_a_proj's adapter upstream (so
  // that the experts' adapters' input gradient is checked too).
  cases.push_back({"qwen3_moe_lora_experts", moe,
                   Lora(2, 4.0, false, {"q_proj"}, 0, {"mlp.experts.gate_up_proj", "down_proj"})});
  cases.push_back({"mixtral_lora_experts_down", mix, Lora(3, 6.0, false, {}, 0, {"down_proj"})});
  cases.push_back({"deepseek_v3_lora_experts_rslora", ds,
                   Lora(2, 3.0, true, {"q_a_proj"}, 0, {"gate_up_proj"})});
  return cases;
}

void RandomInit(Transformer* m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  float* p = m->params().f32();
  for (const ParamInfo& info : m->layout().params()) {
    // Routers get large weights: wide gaps between experts keep perturbations from flipping them.
    const bool router = info.name.find(".gate.weight") != std::string::npos ||
                        info.name.find(".router.") != std::string::npos;
    const float scale =
        info.is_norm ? 0.2f : (router ? 4.0f : 0.5f) / std::sqrt(float(info.shape.back()));
    for (int64_t i = 0; i < NumElements(info.shape); ++i)
      p[info.offset + i] = (info.is_norm ? 1.0f : 0.0f) + scale * n(rng);
  }
}

class ModelGradCheck : public ::testing::TestWithParam<Case> {};

TEST_P(ModelGradCheck, EveryParameterMatchesFiniteDifferences) {
  auto cfg = ModelConfig::FromJson(GetParam().cfg, GetParam().name);
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  if (GetParam().lora.enabled()) {
    auto lora = ResolveLora(GetParam().lora, *cfg, "lora");
    ASSERT_TRUE(lora.ok()) << lora.status().message();
    cfg->lora = *lora;
  }
  Transformer model(*cfg);
  RandomInit(&model, GetParam().seed);
  // Three documents of 5, 1 and 7 tokens; a few labels ignored.
  std::mt19937_64 rng(3);
  std::vector<int64_t> ids(13), labels(13);
  for (int i = 0; i < 13; ++i) ids[i] = labels[i] = int64_t(rng() % cfg->vocab_size);
  labels[2] = labels[9] = -100;
  auto batch = Batch::Packed(ids, labels, {0, 5, 6, 13});
  ASSERT_TRUE(batch.ok()) << batch.status().message();
  const bool drops = cfg->lora.dropout > 0;
  if (drops) Batch::AppendNoise(11, 13, &batch->noise);

  model.ZeroGrads();
  auto info = model.ForwardBackward(*batch);
  ASSERT_TRUE(info.ok());
  if (cfg->is_moe() && cfg->router == RouterKind::kSoftmax) {
    EXPECT_GT(info->aux_loss, 0.5);
  }
  std::vector<float> grads(model.grads().f32(), model.grads().f32() + model.layout().total());
  float* p = model.params().f32();
  // The routing is piecewise constant: a perturbation that changes some token's top-k makes the
  // balancing loss jump, and the difference quotient means nothing there. Such points are skipped.
  auto routing = [&](const ForwardOutputs& f) {
    std::vector<int32_t> r;
    for (const Tensor& t : f.topk_idx) r.insert(r.end(), t.i32(), t.i32() + t.numel());
    return r;
  };
  auto base = model.Forward(*batch, false, false);
  ASSERT_TRUE(base.ok());
  const std::vector<int32_t> base_routing = routing(base.value());
  bool flipped = false;
  auto loss = [&] {
    auto f = model.Forward(*batch, false, false);
    flipped |= routing(*f) != base_routing;
    return f->loss.loss;
  };
  // Under dropout the loss differentiated is the training pass's (Forward drops nothing), and a
  // flip shows in the experts' token counts.
  if (drops) {
    EXPECT_GT(std::fabs(info->loss - base->loss.loss), 1e-4) << "the masks changed nothing";
  }
  auto train_loss = [&] {
    auto f = model.ForwardBackward(*batch);
    flipped |= f->tokens_per_expert != info->tokens_per_expert;
    return f->loss;
  };

  // Adapters move every router's input at once (a flip is likelier): smaller steps for them.
  const double eps = GetParam().lora.enabled() ? 2e-3 : 1e-2;
  int checked = 0, skipped = 0, trainable = 0;
  for (const ParamInfo& pi : model.layout().params()) {
    const int64_t n = NumElements(pi.shape);
    if (pi.frozen) {  // LoRA: no gradient at all
      for (int64_t i = 0; i < n; ++i) ASSERT_EQ(grads[pi.offset + i], 0.0f) << pi.name;
      continue;
    }
    ++trainable;
    std::vector<int64_t> idx(n);
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + std::min<int64_t>(3, n), idx.end(),
                      [&](int64_t a, int64_t b) {
                        return std::fabs(grads[pi.offset + a]) > std::fabs(grads[pi.offset + b]);
                      });
    for (int j = 0; j < std::min<int64_t>(3, n); ++j) {
      const int64_t at = pi.offset + idx[j];
      const double g = grads[at];
      if (std::fabs(g) < 1e-4) continue;  // an expert no token reached: nothing to check
      const float orig = p[at];
      flipped = false;
      p[at] = orig + float(eps);
      const double lp = drops ? train_loss() : loss();
      p[at] = orig - float(eps);
      const double lm = drops ? train_loss() : loss();
      p[at] = orig;
      const double num = (lp - lm) / (2 * eps);
      if (flipped) {
        ++skipped;
        continue;
      }
      EXPECT_NEAR(num, g, 2e-2 * std::fabs(g) + 2e-5) << GetParam().name << ": " << pi.name;
      ++checked;
    }
  }
  EXPECT_GT(checked, trainable);
  EXPECT_LE(skipped, checked / 5) << "too many perturbations changed the routing";
}

INSTANTIATE_TEST_SUITE_P(Configs, ModelGradCheck, ::testing::ValuesIn(Cases()),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace xt
