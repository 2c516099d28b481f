// train/train_checkpoint.h: CheckpointExportParams, a training checkpoint read a unit at a time
// for an export (`xtuner convert`): each unit as ReadCheckpointParams reads the whole, one unit
// resident at a time, a LoRA run's adapters kept and its frozen weights read from its base.
#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "util/export_model.h"
#include "util/testing.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/lora.h"
#include "xtuner/train/train_checkpoint.h"

namespace xt {
namespace {

ModelConfig Model() {
  auto cfg = ModelConfig::FromJson(testing::ExportModelJson(), "test");
  EXPECT_TRUE(cfg.ok()) << cfg.status().message();
  return cfg.ok() ? *cfg : ModelConfig();
}

// Values from each element's place (none zero), shifted by `salt`.
void Fill(float* p, int64_t begin, int64_t n, int salt) {
  for (int64_t i = 0; i < n; ++i)
    p[i] = float(((begin + i) * 7919 + salt) % 1999 + 1) / 1999.0f - 0.5f;
}

TEST(CheckpointExportParams, ReadsAUnitAtATimeWhatTheWholeReadReads) {
  for (bool lora : {false, true}) {
    SCOPED_TRACE(lora ? "LoRA" : "every weight");
    const std::string dir = testing::TempDir(lora ? "ckpt_units_lora" : "ckpt_units");
    const ModelConfig base_cfg = Model();
    ModelConfig cfg = base_cfg;
    TrainState state;
    state.step = 1;
    if (lora) {  // the base model the run adapts, with other values than the checkpoint's
      LoraSpec spec;
      spec.rank = 4;
      spec.alpha = 8;
      spec.targets = {"q_proj", "o_proj"};
      auto resolved = ResolveLora(spec, cfg, "lora");
      ASSERT_TRUE(resolved.ok()) << resolved.status().message();
      cfg.lora = *resolved;
      Transformer base(base_cfg);
      Fill(base.params().f32(), 0, ParamLayout(base_cfg).total(), 3);
      ASSERT_TRUE(SaveHfModel(base, dir + "/base").ok());
      state.lora_base = dir + "/base";
      auto fingerprint = HfWeightsFingerprint(state.lora_base);
      ASSERT_TRUE(fingerprint.ok());
      state.lora_base_fingerprint = *fingerprint;
    }
    std::unique_ptr<Comm> world = MakeSingleComm();
    auto mesh = MakeMesh(1, 0, 1, cfg);
    ASSERT_TRUE(mesh.ok());
    ShardedParams store(cfg, *mesh, world.get(), world.get());
    const int64_t n = store.shard_size();
    Fill(store.params(), 0, n, 0);
    auto adamw = AdamW::Create({}, {{0, n, true}}, n);
    ASSERT_TRUE(adamw.ok());
    const ShardState shard{&store.owned(), store.params(), &*adamw};
    std::string saved;
    ASSERT_TRUE(
        SaveTrainCheckpoint(*world, dir + "/work", cfg, *mesh, shard, state, 1, &saved).ok());

    auto whole = ReadCheckpointParams(saved, cfg);
    ASSERT_TRUE(whole.ok()) << whole.status().message();
    auto units = CheckpointExportParams::Open(saved, cfg);
    ASSERT_TRUE(units.ok()) << units.status().message();
    const ParamLayout layout(cfg);
    int64_t largest = 0, kept = 0;
    for (int64_t u = 0; u < int64_t(layout.units().size()); ++u) {
      ASSERT_TRUE((*units)->Load(u).ok());
      const ParamUnit& unit = layout.units()[u];
      EXPECT_EQ(std::memcmp((*units)->slab() + unit.begin, whole->data() + unit.begin,
                            size_t(unit.size()) * 4),
                0)
          << "unit " << u;
      largest = std::max(largest, unit.size());
    }
    for (int64_t u = 0; lora && u < int64_t(layout.units().size()); ++u) {
      const ParamUnit& t = layout.trainable(u);
      EXPECT_EQ(
          std::memcmp((*units)->slab() + t.begin, whole->data() + t.begin, size_t(t.size()) * 4), 0)
          << "unit " << u << "'s adapters";
      kept += t.size();
    }
    EXPECT_EQ(kept > 0, lora);
    // Resident: about the last unit and the adapters, not the model.
    const size_t page = size_t(sysconf(_SC_PAGESIZE)), bytes = size_t(layout.total()) * 4;
    std::vector<unsigned char> in((bytes + page - 1) / page);
    ASSERT_EQ(mincore(const_cast<float*>((*units)->slab()), bytes, in.data()), 0);
    int64_t resident = 0;
    for (unsigned char c : in) resident += c & 1;
    const int64_t bound = 4 * (largest + kept) + int64_t(page) * 2 * int64_t(layout.units().size());
    EXPECT_LE(resident * int64_t(page), bound);
    EXPECT_LT(2 * bound, int64_t(bytes));
  }
}

// A LoRA checkpoint whose base model is gone is refused before anything is read, naming both.
TEST(CheckpointExportParams, ALoraCheckpointWithoutItsBaseIsANamedError) {
  const std::string dir = testing::TempDir("ckpt_units_nobase");
  ModelConfig cfg = Model();
  LoraSpec spec;
  spec.rank = 2;
  spec.alpha = 4;
  spec.targets = {"q_proj"};
  auto resolved = ResolveLora(spec, cfg, "lora");
  ASSERT_TRUE(resolved.ok());
  cfg.lora = *resolved;
  TrainState state;
  state.step = 1;
  state.lora_base = dir + "/gone";
  state.lora_base_fingerprint = "0";
  std::unique_ptr<Comm> world = MakeSingleComm();
  auto mesh = MakeMesh(1, 0, 1, cfg);
  ASSERT_TRUE(mesh.ok());
  ShardedParams store(cfg, *mesh, world.get(), world.get());
  auto adamw = AdamW::Create({}, {{0, store.shard_size(), true}}, store.shard_size());
  ASSERT_TRUE(adamw.ok());
  const ShardState shard{&store.owned(), store.params(), &*adamw};
  std::string saved;
  ASSERT_TRUE(SaveTrainCheckpoint(*world, dir + "/work", cfg, *mesh, shard, state, 1, &saved).ok());
  auto units = CheckpointExportParams::Open(saved, cfg);
  ASSERT_FALSE(units.ok());
  EXPECT_NE(units.status().message().find(dir + "/gone"), std::string::npos)
      << units.status().message();
  EXPECT_NE(units.status().message().find("xtuner convert --base DIR"), std::string::npos)
      << units.status().message();
}

}  // namespace
}  // namespace xt
