// LoRA adapters: the linear layer with adapters against a double re-implementation and finite
// differences, the models against PEFT (tests/data/lora, made by
// tools/reference/make_lora_reference.py), the merged export against PEFT's merge_and_unload,
// and PEFT's adapter format written back. (Settings, refusals and the layout:
// lora_settings_test.cc.)
#include "xtuner/model/lora.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/debug_dump.h"
#include "xtuner/model/linear.h"
#include "xtuner/ops/dropout_mask.h"
#include "xtuner/ops/ops.h"

namespace xt {
namespace {

using testing::DataPath;
using testing::RandomVector;
using testing::RelError;
using testing::TempDir;

// ---------------------------------------------------------------- the linear layer

struct LinearCase {
  int64_t T, I, O, rank;
  std::vector<std::pair<int64_t, int64_t>> pieces;  // (row0, rows)
  double dropout = 0;                               // LoRA's dropout: each piece its own mask
};

// Whether piece p keeps x[t, i] (all kept without noise): salt p + 3, as the test sets it.
bool Keeps(const LinearCase& c, const std::vector<uint64_t>& noise, size_t p, int64_t t,
           int64_t i) {
  if (noise.empty()) return true;
  return ops::dropout_keep(ops::dropout_row_key(noise[t], p + 3), i,
                           ops::dropout_threshold(c.dropout));
}

// out = x W^T + sum_p scale * (x_p A_p^T) B_p^T on rows [row0, row0 + rows), in double; x_p is
// x with the elements piece p's mask drops zeroed.
std::vector<double> Reference(const LinearCase& c, const std::vector<float>& x,
                              const std::vector<float>& w, const std::vector<std::vector<float>>& a,
                              const std::vector<std::vector<float>>& b, double scale,
                              const std::vector<uint64_t>& noise) {
  std::vector<double> out(c.T * c.O, 0.0);
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t o = 0; o < c.O; ++o)
      for (int64_t i = 0; i < c.I; ++i) out[t * c.O + o] += double(x[t * c.I + i]) * w[o * c.I + i];
    for (size_t p = 0; p < c.pieces.size(); ++p) {
      const auto [row0, rows] = c.pieces[p];
      for (int64_t r = 0; r < rows; ++r) {
        double acc = 0;
        for (int64_t k = 0; k < c.rank; ++k) {
          double z = 0;
          for (int64_t i = 0; i < c.I; ++i)
            if (Keeps(c, noise, p, t, i)) z += double(x[t * c.I + i]) * a[p][k * c.I + i];
          acc += z * b[p][r * c.rank + k];
        }
        out[t * c.O + row0 + r] += scale * acc;
      }
    }
  }
  return out;
}

class LoraLinear : public ::testing::TestWithParam<LinearCase> {};

TEST_P(LoraLinear, ForwardAndBackwardMatchDoubleAndFiniteDifferences) {
  const LinearCase& c = GetParam();
  const float scale = float(1.75 / (1.0 - c.dropout));  // LoraSpec::dropout_scale()
  std::vector<float> x = RandomVector(c.T * c.I, 1), w = RandomVector(c.O * c.I, 2, 0.5f);
  std::vector<uint64_t> noise;  // the tokens' keys under dropout
  for (int64_t t = 0; c.dropout > 0 && t < c.T; ++t) noise.push_back(0x1234567ull * (t + 1) + 99);
  std::vector<std::vector<float>> a, b, da, db;
  Linear lin;
  lin.w = w.data();
  for (size_t p = 0; p < c.pieces.size(); ++p) {
    a.push_back(RandomVector(c.rank * c.I, 10 + p, 0.5f));
    b.push_back(RandomVector(c.pieces[p].second * c.rank, 20 + p, 0.5f));
    da.emplace_back(a.back().size(), 0.0f);
    db.emplace_back(b.back().size(), 0.0f);
  }
  for (size_t p = 0; p < c.pieces.size(); ++p)
    lin.lora.push_back({a[p].data(), b[p].data(), da[p].data(), db[p].data(), c.pieces[p].first,
                        c.pieces[p].second, c.rank, scale, noise.empty() ? nullptr : noise.data(),
                        p + 3, ops::dropout_threshold(c.dropout)});
  std::vector<float> out(c.T * c.O);
  LinearForward(out.data(), x.data(), lin, c.T, c.I, c.O);
  const std::vector<double> want = Reference(c, x, w, a, b, scale, noise);
  EXPECT_LE(RelError(out.data(), want.data(), int64_t(out.size())), 1e-6);

  // loss = <out, g>: the backward of g against finite differences of every input.
  const std::vector<float> g = RandomVector(c.T * c.O, 3);
  std::vector<float> dx(c.T * c.I, 0.0f), dw(w.size(), 0.0f);
  lin.dw = dw.data();
  LinearBackward(dx.data(), g.data(), x.data(), lin, c.T, c.I, c.O);
  auto loss = [&] {
    const std::vector<double> y = Reference(c, x, w, a, b, scale, noise);
    double s = 0;
    for (size_t i = 0; i < y.size(); ++i) s += y[i] * g[i];
    return s;
  };
  EXPECT_LE(testing::GradCheck(x, dx, loss, 1e-2), 1e-4);
  EXPECT_LE(testing::GradCheck(w, dw, loss, 1e-2), 1e-4);
  for (size_t p = 0; p < c.pieces.size(); ++p) {
    EXPECT_LE(testing::GradCheck(a[p], da[p], loss, 1e-2), 1e-4) << "A of piece " << p;
    EXPECT_LE(testing::GradCheck(b[p], db[p], loss, 1e-2), 1e-4) << "B of piece " << p;
  }

  // Accumulation: a second backward adds the same again; a null dw (frozen) writes nothing.
  std::vector<float> dx2 = dx, da0 = da.empty() ? std::vector<float>() : da[0], dw1 = dw;
  lin.dw = nullptr;
  LinearBackward(dx2.data(), g.data(), x.data(), lin, c.T, c.I, c.O, /*accumulate_din=*/true);
  for (size_t i = 0; i < dx.size(); ++i)
    EXPECT_NEAR(dx2[i], 2 * dx[i], 1e-5f + 1e-5f * std::fabs(dx[i]));
  for (size_t i = 0; i < da0.size(); ++i)
    EXPECT_NEAR(da[0][i], 2 * da0[i], 1e-5f + 1e-5f * std::fabs(da0[i]));
  EXPECT_EQ(dw, dw1);  // the frozen backward left it alone
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LoraLinear,
    ::testing::Values(LinearCase{5, 7, 9, 3, {{0, 9}}},           // one adapter on all rows
                      LinearCase{4, 6, 10, 2, {{0, 5}, {5, 5}}},  // a fused gate_up's two halves
                      LinearCase{1, 3, 4, 1, {{0, 2}, {2, 2}}},   // one token, rank 1
                      LinearCase{6, 5, 8, 4, {}},                 // no adapter: the base layer
                      // LoRA's dropout: each adapter's input masked, its gradient alike
                      LinearCase{5, 7, 9, 3, {{0, 9}}, 0.4},
                      LinearCase{4, 6, 10, 2, {{0, 5}, {5, 5}}, 0.25},
                      LinearCase{3, 33, 4, 2, {{0, 4}}, 0.9}));

// The masks of ops/dropout_mask.h: each element dropped with probability p, independently of
// its neighbours and of the other adapters' masks; ops::dropout_mask zeroes those and keeps the
// others exactly, or adds them.
TEST(LoraDropout, MasksDropAtTheRateAskedAndIndependently) {
  const int64_t T = 200, C = 500;
  std::vector<uint64_t> keys(T);
  for (int64_t t = 0; t < T; ++t) keys[t] = 0x9e3779b97f4a7c15ull * uint64_t(t + 1);
  const std::vector<float> x = RandomVector(T * C, 4);
  for (double p : {0.0, 0.05, 0.5, 0.9}) {
    SCOPED_TRACE("p " + std::to_string(p));
    const uint32_t threshold = ops::dropout_threshold(p);
    std::vector<float> y(T * C), z(T * C);
    ops::dropout_mask(y.data(), x.data(), T, C, keys.data(), 1, threshold, /*add=*/false);
    ops::dropout_mask(z.data(), x.data(), T, C, keys.data(), 2, threshold, /*add=*/false);
    int64_t dropped = 0, both = 0, next = 0;
    for (int64_t q = 0; q < T * C; ++q) {
      ASSERT_TRUE(y[q] == 0.0f || y[q] == x[q]) << q;  // kept exactly
      dropped += y[q] == 0;
      both += y[q] == 0 && z[q] == 0;
      if (q + 1 < T * C) next += y[q] == 0 && y[q + 1] == 0;
    }
    const double n = double(T * C), f = double(dropped) / n;
    // 100k draws: the rate within 5 standard deviations, pairs as independent ones are.
    const double sd = std::sqrt(p * (1 - p) / n) + 1e-12;
    EXPECT_NEAR(f, p, 5 * sd);
    EXPECT_NEAR(double(both) / n, p * p, 5 * std::sqrt(p * p / n) + 1e-12) << "two salts";
    EXPECT_NEAR(double(next) / n, p * p, 5 * std::sqrt(p * p / n) + 1e-12) << "neighbours";
    // add: y + masked x
    std::vector<float> acc(T * C, 1.0f);
    ops::dropout_mask(acc.data(), x.data(), T, C, keys.data(), 1, threshold, /*add=*/true);
    for (int64_t q = 0; q < T * C; q += 97) ASSERT_EQ(acc[q], 1.0f + y[q]) << q;
  }
  EXPECT_EQ(ops::dropout_threshold(0.5), 0x80000000u);
  EXPECT_EQ(ops::dropout_threshold(0.0), 0u);
  EXPECT_EQ(ops::dropout_threshold(std::nextafter(1.0, 0.0)), 0xffffffffu);
}

// ---------------------------------------------------------------- models against PEFT

struct PeftCase {
  const char* name;   // tests/data/lora/<name>
  const char* base;   // tests/data/<base>
  int64_t grads;      // adapter tensors (an expert weight's stacked adapter: two)
  int64_t merged;     // hub tensors the adapters change (each expert's gate, up, down proj)
  double tol = 1e-5;  // relative, fp32 against PEFT's float64
};

const PeftCase kPeftCases[] = {{"qwen3_dense_all", "qwen3_dense_tiny", 28, 14},
                               {"qwen3_moe_attn_rslora", "qwen3_moe_tiny", 12, 6},
                               {"deepseek_v3_mla", "deepseek_v3_tiny", 30, 15},
                               // the routed experts (PEFT's target_parameters)
                               // (layer 0's attention adapters' gradients pass back through
                               // both layers' expert adapters: 1.7e-5 measured, the rest < 1e-5)
                               {"qwen3_moe_experts", "qwen3_moe_tiny", 16, 52, 3e-5},
                               {"mixtral_experts_down", "mixtral_tiny", 4, 8},
                               {"deepseek_v3_experts", "deepseek_v3_tiny", 16, 38},
                               // GPT-OSS's (transposed, gate and up interleaved): one layer's
                               // beside all-linear, as OpenAI's recipe; every layer's down_proj
                               {"gpt_oss_experts_layer1", "variants/gpt_oss_tiny", 20, 10},
                               {"gpt_oss_experts_down", "variants/gpt_oss_tiny", 8, 4}};

class LoraPeft : public ::testing::TestWithParam<PeftCase> {};

// debug-dump with the adapter: logits, losses and every adapter's gradient within tol (1e-5) of
// PEFT's float64 model, and no gradient for a base weight.
TEST_P(LoraPeft, DebugDumpMatchesPeft) {
  const std::string dir = DataPath(std::string("lora/") + GetParam().name);
  const std::string out = TempDir("lora_parity") + "/dump.safetensors";
  Status st = DebugDump(DataPath(GetParam().base), dir + "/reference.safetensors", out, dir);
  ASSERT_TRUE(st.ok()) << st.message();
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  auto got = SafetensorsFile::Open(out);
  ASSERT_TRUE(ref.ok() && got.ok());
  int grads = 0;
  for (const std::string& name : ref->names()) {
    if (name == "input_ids" || name == "labels" || name.rfind("merged.", 0) == 0) continue;
    auto info = ref->Info(name);
    ASSERT_TRUE(info.ok());
    auto want = ref->GetF64(name, info->shape);
    auto have = got->GetF32(name, info->shape);
    ASSERT_TRUE(want.ok()) << want.status().message();
    ASSERT_TRUE(have.ok()) << name << ": " << have.status().message();
    EXPECT_LE(RelError(have->f32(), want->data(), have->numel()), GetParam().tol) << name;
    grads += name.rfind("grad.", 0) == 0;
  }
  EXPECT_EQ(grads, GetParam().grads);
  int dumped_grads = 0;
  for (const std::string& name : got->names())
    if (name.rfind("grad.", 0) == 0) {
      EXPECT_NE(name.find(".lora_"), std::string::npos) << name << ": a frozen weight's gradient";
      ++dumped_grads;
    }
  EXPECT_EQ(dumped_grads, grads);
}

// The export of a model with adapters is merged as PEFT's merge_and_unload merges it; every other
// tensor is the base's, bit for bit; no adapter tensor and no LoRA key is written.
TEST_P(LoraPeft, ExportIsMergedAsPeftMergesIt) {
  const std::string dir = DataPath(std::string("lora/") + GetParam().name);
  auto model = LoadHfModel(DataPath(GetParam().base), dir);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const std::string out = TempDir("lora_merged");
  ASSERT_TRUE(SaveHfModel(**model, out, ExportDType::kF32).ok());
  auto exported = SafetensorsCheckpoint::Open(out);
  auto base = SafetensorsCheckpoint::Open(DataPath(GetParam().base));
  auto ref = SafetensorsFile::Open(dir + "/reference.safetensors");
  ASSERT_TRUE(exported.ok() && base.ok() && ref.ok());
  EXPECT_EQ(exported->names(), base->names());
  int merged = 0;
  for (const std::string& name : exported->names()) {
    auto info = base->Info(name);
    ASSERT_TRUE(info.ok());
    auto have = exported->GetF32(name, info->shape);
    ASSERT_TRUE(have.ok()) << have.status().message();
    if (ref->contains("merged." + name)) {
      auto want = ref->GetF64("merged." + name, info->shape);
      ASSERT_TRUE(want.ok());
      EXPECT_LE(RelError(have->f32(), want->data(), have->numel()), 1e-6) << name;
      ++merged;
    } else {
      auto b = base->GetF32(name, info->shape);
      ASSERT_TRUE(b.ok());
      EXPECT_EQ(std::memcmp(have->data(), b->data(), b->nbytes()), 0) << name;
    }
  }
  EXPECT_EQ(merged, GetParam().merged);
  std::ifstream in(out + "/config.json");
  EXPECT_FALSE(testing::Json(in).contains("xtuner_lora"));
}

// The adapter written back reads as the same tensors, under PEFT's names and config keys.
TEST_P(LoraPeft, SavedAdapterReadsBackExactly) {
  const std::string dir = DataPath(std::string("lora/") + GetParam().name);
  auto model = LoadHfModel(DataPath(GetParam().base), dir);
  ASSERT_TRUE(model.ok()) << model.status().message();
  const Transformer& m = **model;
  const std::string out = TempDir("lora_saved");
  ASSERT_TRUE(SaveLoraAdapter(m.config(), m.layout(), m.params().f32(), out, "base/dir").ok());
  auto mine = SafetensorsFile::Open(out + "/adapter_model.safetensors");
  auto peft = SafetensorsFile::Open(dir + "/adapter_model.safetensors");
  ASSERT_TRUE(mine.ok() && peft.ok());
  EXPECT_EQ(mine->names(), peft->names());
  for (const std::string& name : peft->names()) {
    auto a = mine->Get(name), b = peft->Get(name);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->shape(), b->shape()) << name;
    EXPECT_EQ(std::memcmp(a->data(), b->data(), b->nbytes()), 0) << name;
  }
  std::ifstream in(out + "/adapter_config.json");
  const nlohmann::json j = testing::Json(in);
  const nlohmann::json pj = testing::JsonFile(dir + "/adapter_config.json");
  EXPECT_EQ(j["peft_type"], "LORA");
  EXPECT_EQ(j["r"], pj["r"]);
  EXPECT_EQ(j["lora_alpha"].get<double>(), pj["lora_alpha"].get<double>());
  EXPECT_EQ(j["use_rslora"], pj["use_rslora"]);
  EXPECT_EQ(j["base_model_name_or_path"], "base/dir");
  auto spec = LoraSpecOfAdapter(out, m.config());
  ASSERT_TRUE(spec.ok()) << spec.status().message();
  EXPECT_EQ(spec->targets, m.config().lora.targets);
  EXPECT_EQ(spec->expert_targets, m.config().lora.expert_targets);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LoraPeft, ::testing::ValuesIn(kPeftCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace xt
