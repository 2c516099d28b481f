// Properties training relies on: recompute changes memory, not gradients (LoRA's dropout masks
// drawn again); gradient accumulation with global token averaging gives the gradient of the
// whole batch, balancing loss included when its statistics are pooled.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <optional>

#include "util/fixture_files.h"
#include "util/testing.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"

namespace xt {
namespace {

std::unique_ptr<Transformer> Load(const std::string& fixture) {
  auto m = LoadHfModel(testing::DataPath(fixture));
  EXPECT_TRUE(m.ok()) << m.status().message();
  return std::move(m).value();
}

using testing::ReferenceBatch;

// A fixture's model with its balancing coefficient set to aux_coef, HF weights loaded; its
// [2, 16] batch whole, and each of its two rows as a batch of its own.
struct FixtureRun {
  std::unique_ptr<Transformer> model;
  std::optional<Batch> whole;
  std::vector<Batch> rows;
};
void LoadFixtureRun(const char* fixture, double aux_coef, FixtureRun* run) {
  auto cfg = ModelConfig::Load(testing::DataPath(fixture));
  ASSERT_TRUE(cfg.ok());
  cfg->router_aux_loss_coef = aux_coef;
  run->model = std::make_unique<Transformer>(*cfg);
  ASSERT_TRUE(LoadHfWeights(run->model.get(), testing::DataPath(fixture)).ok());
  std::vector<int64_t> ids, labels;
  ReferenceBatch(fixture, &ids, &labels);
  auto whole = Batch::FromRows(ids, labels, 2, 16);
  ASSERT_TRUE(whole.ok());
  run->whole = *whole;
  for (int row = 0; row < 2; ++row) {
    std::vector<int64_t> ri(ids.begin() + row * 16, ids.begin() + (row + 1) * 16);
    std::vector<int64_t> rl(labels.begin() + row * 16, labels.begin() + (row + 1) * 16);
    auto half = Batch::FromRows(ri, rl, 1, 16);
    ASSERT_TRUE(half.ok());
    run->rows.push_back(*half);
  }
}

TEST(Recompute, GradientsAreBitIdenticalAndMemoryFalls) {
  for (const char* fixture : {"qwen3_moe_tiny", "mixtral_tiny", "qwen3_dense_tiny",
                              "deepseek_v3_tiny", "variants/gpt_oss_tiny"}) {
    auto model = Load(fixture);
    std::vector<int64_t> ids, labels;
    ReferenceBatch(fixture, &ids, &labels);
    auto batch = Batch::FromRows(ids, labels, 2, 16);
    ASSERT_TRUE(batch.ok());
    std::vector<float> first;
    int64_t bytes_none = 0;
    for (double fraction : {0.0, 0.5, 1.0}) {
      model->SetRecompute(fraction);
      model->ZeroGrads();
      auto info = model->ForwardBackward(*batch);
      ASSERT_TRUE(info.ok());
      const float* g = model->grads().f32();
      if (first.empty()) {
        first.assign(g, g + model->layout().total());
        bytes_none = info->activation_bytes;
      } else {
        EXPECT_EQ(std::memcmp(first.data(), g, first.size() * 4), 0) << fixture << " " << fraction;
        EXPECT_LT(info->activation_bytes, bytes_none) << fixture << " " << fraction;
      }
    }
  }
}

TEST(GradientAccumulation, TwoMicroBatchesOfOneRowEqualOneOfTwoRows) {
  // Global token averaging: each loss token weighs 1 / (loss tokens of the whole global batch).
  // The balancing loss is off here; the next test pools its statistics over the micro-batches.
  for (const char* fixture :
       {"qwen3_dense_tiny", "qwen3_moe_tiny", "deepseek_v3_tiny", "variants/gpt_oss_tiny"}) {
    FixtureRun run;
    LoadFixtureRun(fixture, 0.0, &run);
    if (HasFatalFailure()) return;
    Transformer& model = *run.model;
    const double w = 1.0 / double(run.whole->num_loss_tokens());
    model.ZeroGrads();
    auto info = model.ForwardBackward(*run.whole, w);
    ASSERT_TRUE(info.ok());
    std::vector<float> g_whole(model.grads().f32(), model.grads().f32() + model.layout().total());

    model.ZeroGrads();
    double loss_sum = 0;
    for (const Batch& half : run.rows) {
      auto hi = model.ForwardBackward(half, w);
      ASSERT_TRUE(hi.ok());
      loss_sum += hi->ce_loss * double(hi->num_loss_tokens) * w;
    }
    EXPECT_NEAR(loss_sum, info->ce_loss, 1e-6);
    EXPECT_LT(testing::RelError(model.grads().f32(), g_whole.data(), int64_t(g_whole.size())), 1e-6)
        << fixture;
  }
}

TEST(GradientAccumulation, PooledBalancingLossOfTwoMicroBatchesEqualsTheWholeBatchs) {
  // The balancing loss of the global batch: the router statistics of both rows, pooled (what the
  // trainer's router pre-pass gathers), given to each micro-batch's backward. With the aux
  // coefficient raised so that the balancing gradient is a large part of the router's.
  for (const char* fixture : {"qwen3_moe_tiny", "mixtral_tiny"}) {
    FixtureRun run;
    LoadFixtureRun(fixture, 0.5, &run);
    if (HasFatalFailure()) return;
    Transformer& model = *run.model;
    const std::vector<Batch>& rows = run.rows;
    const double w = 1.0 / double(run.whole->num_loss_tokens());
    model.ZeroGrads();
    auto info = model.ForwardBackward(*run.whole, w);
    ASSERT_TRUE(info.ok());
    const int64_t n = model.layout().total();
    std::vector<float> g_whole(model.grads().f32(), model.grads().f32() + n);

    // The router-only forward gives the statistics of the full forward.
    BalanceStats pooled;
    for (const Batch& b : rows) {
      auto s = model.RouterStats(b);
      ASSERT_TRUE(s.ok());
      pooled.Add(*s);
    }
    EXPECT_EQ(pooled.rows, info->balance.rows);
    for (size_t e = 0; e < pooled.count.size(); ++e) {
      EXPECT_EQ(pooled.count[e], info->balance.count[e]) << fixture << " expert " << e;
      EXPECT_NEAR(pooled.prob_sum[e], info->balance.prob_sum[e], 1e-5) << fixture;
    }
    EXPECT_NEAR(pooled.Loss(), info->aux_loss, 1e-6 * info->aux_loss);

    // Pooled: the whole batch's gradient. Each micro-batch on its own (transformers' loss per
    // forward, averaged): a different one, so the comparison can fail.
    for (bool pool : {true, false}) {
      model.ZeroGrads();
      BalanceStats seen;
      for (const Batch& b : rows) {
        auto hi =
            pool ? model.ForwardBackward(b, w, 1.0, [&](const BalanceStats&) { return pooled; })
                 : model.ForwardBackward(b, w, 0.5);
        ASSERT_TRUE(hi.ok());
        seen.Add(hi->balance);
      }
      EXPECT_NEAR(seen.Loss(), info->aux_loss, 1e-6 * info->aux_loss);
      const double err = testing::RelError(model.grads().f32(), g_whole.data(), n);
      if (pool)
        EXPECT_LT(err, 1e-6) << fixture;
      else
        EXPECT_GT(err, 1e-4) << fixture;
    }
  }
}

// LoRA's dropout: a recomputed layer draws its masks again from the batch's keys (the gradients
// stay bit-identical), the router pre-pass draws the backward pass's (the same routing), and
// evaluation drops nothing (Forward ignores the keys).
TEST(Recompute, LoraDropoutMasksAreDrawnAgain) {
  for (const auto& [fixture, targets] :
       {std::pair<const char*, const char*>{"qwen3_dense_tiny", "all-linear"},
        {"qwen3_moe_tiny", "auto"}}) {
    SCOPED_TRACE(fixture);
    auto cfg = ModelConfig::Load(testing::DataPath(fixture));
    ASSERT_TRUE(cfg.ok());
    LoraSpec spec;
    spec.rank = 4;
    spec.alpha = 8;
    spec.dropout = 0.3;
    spec.targets = SplitLoraTargets(targets);
    auto lora = ResolveLora(spec, *cfg, "lora");
    ASSERT_TRUE(lora.ok()) << lora.status().message();
    cfg->lora = *lora;
    Transformer model(*cfg);
    ASSERT_TRUE(LoadHfWeights(&model, testing::DataPath(fixture)).ok());
    const std::vector<float> noise = testing::RandomVector(model.layout().total(), 9, 0.05f);
    for (const ParamInfo& p : model.layout().params())  // B too: every adapter term non-zero
      if (p.lora)
        std::copy(noise.begin() + p.offset, noise.begin() + p.offset + NumElements(p.shape),
                  model.params().f32() + p.offset);
    std::vector<int64_t> ids, labels;
    ReferenceBatch(fixture, &ids, &labels);
    Batch batch = Batch::FromRows(ids, labels, 2, 16).value();
    Batch::AppendNoise(3, batch.num_tokens(), &batch.noise);
    std::vector<float> first;
    LossInfo trained;
    for (double fraction : {0.0, 0.5, 1.0}) {
      model.SetRecompute(fraction);
      model.ZeroGrads();
      auto info = model.ForwardBackward(batch);
      ASSERT_TRUE(info.ok());
      const float* g = model.grads().f32();
      if (first.empty()) {
        first.assign(g, g + model.layout().total());
        trained = *info;
      } else {
        EXPECT_EQ(std::memcmp(first.data(), g, first.size() * 4), 0) << fraction;
      }
    }
    auto stats = model.RouterStats(batch);
    ASSERT_TRUE(stats.ok());
    EXPECT_EQ(stats->count, trained.balance.count);
    Batch plain = batch;
    plain.noise.clear();
    auto eval = model.Forward(batch, false, false), eval_plain = model.Forward(plain, false, false);
    ASSERT_TRUE(eval.ok() && eval_plain.ok());
    EXPECT_EQ(eval->loss.loss, eval_plain->loss.loss);
    EXPECT_GT(std::abs(eval->loss.loss - trained.loss), 1e-4) << "the masks changed nothing";
  }
}

// A rank short of rows runs an empty micro-batch to stay in step with the others: it adds nothing.
TEST(EmptyBatch, RunsAndAddsNoGradientNorStatistics) {
  for (const char* fixture : {"qwen3_moe_tiny", "mixtral_tiny", "qwen3_dense_tiny",
                              "deepseek_v3_tiny", "variants/gpt_oss_tiny"}) {
    auto model = Load(fixture);
    model->SetRecompute(0.5);
    model->ZeroGrads();
    auto info = model->ForwardBackward(Batch::Empty(), 0.1, 1.0);
    ASSERT_TRUE(info.ok()) << fixture << ": " << info.status().message();
    EXPECT_EQ(info->loss, 0.0);
    EXPECT_EQ(info->num_loss_tokens, 0);
    const float* g = model->grads().f32();
    EXPECT_EQ(std::count(g, g + model->layout().total(), 0.0f), model->layout().total()) << fixture;
    auto s = model->RouterStats(Batch::Empty());
    ASSERT_TRUE(s.ok());
    EXPECT_EQ(s->rows, 0);
    EXPECT_EQ(s->Loss(), 0.0);
  }
  // Any other batch without tokens is still an error.
  Batch b = Batch::Empty();
  b.cu_seqlens = {0, 0};
  EXPECT_FALSE(b.Validate(16).ok());
}

}  // namespace
}  // namespace xt
