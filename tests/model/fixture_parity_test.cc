// The engine against Hugging Face transformers: debug-dump on each reference checkpoint in
// tests/data must give logits, losses, every gradient, hidden states, router logits and packed
// logits within ||a - b|| / ||b|| <= 1e-5 of the float64 reference, and the same top-k experts.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>

#include "util/testing.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/config.h"
#include "xtuner/model/debug_dump.h"

namespace xt {
namespace {

constexpr double kTol = 1e-5;

// Top-k expert sets per row of router logits (T, E), order-free.
std::vector<std::vector<int>> TopK(const std::vector<double>& logits, int64_t E, int64_t k) {
  std::vector<std::vector<int>> out;
  for (size_t r = 0; r * E < logits.size(); ++r) {
    std::vector<int> idx(E);
    std::iota(idx.begin(), idx.end(), 0);
    std::stable_sort(idx.begin(), idx.end(),
                     [&](int a, int b) { return logits[r * E + a] > logits[r * E + b]; });
    idx.resize(k);
    std::sort(idx.begin(), idx.end());
    out.push_back(idx);
  }
  return out;
}

// Compares every tensor of the dump with the reference tensor of the same name.
void ExpectParity(const std::string& dir, const std::string& batch_path) {
  const std::string out = testing::TempDir("parity") + "/dump.safetensors";
  Status st = DebugDump(dir, batch_path, out);
  ASSERT_TRUE(st.ok()) << st.message();
  auto cfg = ModelConfig::Load(dir);
  ASSERT_TRUE(cfg.ok()) << cfg.status().message();
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  auto got = SafetensorsFile::Open(out);
  ASSERT_TRUE(ref.ok() && got.ok());
  auto exact = SafetensorsFile::Open(dir + "/exact.safetensors");  // optional

  int compared = 0, grads = 0;
  double worst = 0;
  std::string worst_name;
  for (const std::string& name : got->names()) {
    if (!ref->contains(name)) continue;
    if (name.rfind("grad.", 0) == 0 && name.find("e_score_correction_bias") != std::string::npos)
      continue;
    auto info = ref->Info(name);
    ASSERT_TRUE(info.ok());
    auto want = ref->GetF64(name, info->shape);
    auto have = got->GetF32(name, info->shape);
    ASSERT_TRUE(want.ok()) << want.status().message();
    ASSERT_TRUE(have.ok()) << name << ": " << have.status().message();
    double err = testing::RelError(have->f32(), want->data(), have->numel());
    if (exact.ok() && exact->contains(name)) {
      // transformers' own fp32 round-off dominates this reference tensor (see exact.safetensors
      // in the variants README): hold the engine to the true float64 value instead, and to the
      // HF value within that round-off.
      auto truth = exact->GetF64(name, info->shape);
      ASSERT_TRUE(truth.ok()) << truth.status().message();
      EXPECT_LE(testing::RelError(have->f32(), truth->data(), have->numel()), kTol) << name;
      EXPECT_LE(err, 5e-5) << dir << ": " << name;
      err = testing::RelError(have->f32(), truth->data(), have->numel());
    } else {
      EXPECT_LE(err, kTol) << dir << ": " << name;
    }
    if (err > worst) worst = err, worst_name = name;
    ++compared;
    grads += name.rfind("grad.", 0) == 0;
  }
  // Everything the reference holds that the dump must reproduce was compared.
  for (const std::string& name : ref->names()) {
    bool expected = name == "logits" || name == "ce_loss" || name == "loss" ||
                    name == "packed.logits" || name.rfind("grad.", 0) == 0 ||
                    name.rfind("hidden_states.", 0) == 0 || name.rfind("router_logits.", 0) == 0 ||
                    (name == "aux_loss" && cfg->is_moe());
    if (expected) {
      EXPECT_TRUE(got->contains(name)) << dir << ": dump lacks " << name;
    }
  }
  std::printf("parity %s: %d tensors (%d gradients), worst relative error %.2e (%s)\n", dir.c_str(),
              compared, grads, worst, worst_name.c_str());
  EXPECT_GT(grads, 5);
  EXPECT_GT(compared, grads);

  // Router choices: identical top-k sets for every token of every MoE layer (softmax routers:
  // the reference has no router logits for DeepSeek-V3, whose choice its logits and gradients
  // already pin down).
  for (int64_t l = 0; l < cfg->num_layers; ++l) {
    if (!cfg->layer_is_moe[l] || cfg->router != RouterKind::kSoftmax) continue;
    const std::string name = "router_logits." + std::to_string(l);
    ASSERT_TRUE(ref->contains(name));
    auto info = ref->Info(name);
    auto want = ref->GetF64(name, info->shape);
    auto have = got->GetF64(name, info->shape);
    ASSERT_TRUE(want.ok() && have.ok());
    EXPECT_EQ(TopK(*have, cfg->num_experts, cfg->top_k), TopK(*want, cfg->num_experts, cfg->top_k))
        << dir << ": " << name;
  }
}

class FixtureParity : public ::testing::TestWithParam<std::string> {};

TEST_P(FixtureParity, DebugDumpMatchesTransformers) {
  const std::string dir = testing::DataPath(GetParam());
  ExpectParity(dir, dir + "/reference.safetensors");
}

INSTANTIATE_TEST_SUITE_P(Hub, FixtureParity,
                         ::testing::Values("qwen3_moe_tiny", "qwen3_dense_tiny", "mixtral_tiny",
                                           "deepseek_v3_tiny"));

// Checkpoints made by tools/reference/make_reference.py (tests/data/variants/README.md): v4
// config spellings, tied embeddings, dense layers among MoE layers, norm_topk_prob=false, top-1,
// top-E, MQA, head_dim 12, sharded files and BF16 weights; DeepSeek-V3 with a plain q_proj,
// RoPE pairs not interleaved, several groups kept, a non-zero correction bias that changes
// choices, v smaller than or equal to the query head; YaRN RoPE on a Qwen3-MoE and on a
// DeepSeek-V3 (its hub rope_scaling, with the softmax's mscale); block-quantized FP8 checkpoints
// of a Qwen3-MoE and a DeepSeek-V3, against transformers' own FP8 load (dequantized); GPT-OSS
// (tools/reference/make_gpt_oss_reference.py: stacked interleaved experts, biases, sinks, sliding
// windows shorter than the documents, the GLU's clamp reached, YaRN untruncated; and in BF16
// with a full-attention first layer and plain RoPE; and with MXFP4 experts as the hub's releases
// ship them, against transformers' own dequantizing load).
INSTANTIATE_TEST_SUITE_P(Variants, FixtureParity,
                         ::testing::Values("variants/qwen3_moe_v4", "variants/qwen3_moe_mlp_only",
                                           "variants/qwen3_dense_gqa4_tied",
                                           "variants/mixtral_k1_mqa", "variants/qwen3_moe_bf16_kE",
                                           "variants/deepseek_v3_v4_plain_q",
                                           "variants/deepseek_v3_groups",
                                           "variants/deepseek_v3_bf16", "variants/qwen3_moe_yarn",
                                           "variants/deepseek_v3_yarn", "variants/qwen3_moe_fp8",
                                           "variants/deepseek_v3_fp8", "variants/gpt_oss_tiny",
                                           "variants/gpt_oss_bf16", "variants/gpt_oss_mxfp4"),
                         [](const auto& info) { return info.param.substr(9); });

}  // namespace
}  // namespace xt
