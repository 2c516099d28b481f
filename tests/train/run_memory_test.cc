// train/run_memory.h: the host memory a rank's state takes, and the warning before the model
// loads where a host's available memory cannot hold it.
#include "xtuner/train/run_memory.h"

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "util/testing.h"
#include "xtuner/dist/host_memory.h"
#include "xtuner/model/lora.h"
#include "xtuner/train/progress_format.h"

namespace xt {
namespace {

ModelConfig Tiny(bool lora) {
  auto cfg = ModelConfig::Load(testing::DataPath("qwen3_moe_tiny"));
  EXPECT_TRUE(cfg.ok()) << cfg.status().message();
  if (!cfg.ok() || !lora) return cfg.ok() ? *cfg : ModelConfig();
  LoraSpec spec;
  spec.rank = 4;
  spec.alpha = 8;
  spec.targets = {"q_proj", "v_proj"};
  auto resolved = ResolveLora(spec, *cfg, "lora");
  EXPECT_TRUE(resolved.ok()) << resolved.status().message();
  if (resolved.ok()) cfg->lora = *resolved;
  return *cfg;
}

// Parameters 4 B each; what trains: moments (8 B) and, on the CPU, gradients (4 B).
TEST(RunMemory, HostStateIsTheShardAndWhatTrains) {
  std::unique_ptr<Comm> world = MakeSingleComm();
  for (bool lora : {false, true}) {
    const ModelConfig cfg = Tiny(lora);
    ShardedParams store(cfg, Mesh{}, world.get(), world.get());
    const int64_t n = store.shard_size(), t = store.trainable_floats();
    EXPECT_EQ(n, ParamLayout(cfg).total());
    EXPECT_EQ(t, lora ? AdapterParams(ParamLayout(cfg)) : n);
    EXPECT_EQ(HostStateBytes(store, /*on_gpu=*/false), 4 * n + 12 * t);
    EXPECT_EQ(HostStateBytes(store, /*on_gpu=*/true), 4 * n + 8 * t);
    // This machine holds a tiny model: no warning.
    if (AvailableHostMemory() > 4 * HostStateBytes(store, false)) {
      EXPECT_EQ(CheckHostState(store, false, *world), "");
    }
  }
}

TEST(RunMemory, AWarningNamesTheNeedAndTheShare) {
  const int64_t gib = int64_t(1) << 30;
  EXPECT_EQ(HostStateWarning(10 * gib, 10 * gib, false), "");
  const std::string cpu = HostStateWarning(114 * gib, 60 * gib, false);
  EXPECT_NE(cpu.find("host memory: a rank's fp32 state"), std::string::npos) << cpu;
  EXPECT_NE(cpu.find(HumanBytes(double(114 * gib))), std::string::npos) << cpu;
  EXPECT_NE(cpu.find(HumanBytes(double(60 * gib))), std::string::npos) << cpu;
  EXPECT_EQ(cpu.find("GPU"), std::string::npos) << cpu;
  const std::string gpu = HostStateWarning(114 * gib, 60 * gib, true);
  EXPECT_NE(gpu.find("which its GPU uploads from and syncs back to"), std::string::npos) << gpu;
}

// The run summary's GPU lines: the device's state less what it holds in bf16 only (2 B a float
// in a bf16 copy of the whole model instead of 4 B in fp32 on one GPU), the host's parameters
// and moments (a GPU run's host gradients are never written).
TEST(RunMemory, TheGpuSummaryCountsTheWeightsHeldInBf16Only) {
  std::unique_ptr<Comm> world = MakeSingleComm();
  const ModelConfig mc = Tiny(/*lora=*/true);
  ShardedParams store(mc, Mesh{}, world.get(), world.get());
  const int64_t n = store.shard_size(), t = store.trainable_floats(), held = n / 2;
  TrainConfig cfg;
  cfg.device = "cuda";
  cfg.precision = "bf16";
  auto line = [](const RunSummary& s, const std::string& key) {
    for (const auto& row : s.extra)
      if (row.label == key) return row.value;
    return std::string("(none)");
  };
  for (const int64_t bf16_only : {int64_t(0), held}) {
    RunSummary sum;
    AddMemorySummary(cfg, mc, Mesh{}, store, bf16_only, *world, nullptr, &sum);
    const int64_t device = 4 * n + 12 * t - 4 * bf16_only + 2 * n;
    EXPECT_EQ(sum.memory_estimate_bytes, device);
    const std::string gpu = line(sum, "per cuda device"), host = line(sum, "per rank, host");
    EXPECT_NE(gpu.find(HumanBytes(double(device))), std::string::npos) << gpu;
    EXPECT_EQ(gpu.find("the frozen matmul weights' fp32 not held") != std::string::npos,
              bf16_only > 0)
        << gpu;
    EXPECT_NE(host.find(HumanBytes(double(HostStateBytes(store, true)))), std::string::npos)
        << host;
  }
}

}  // namespace
}  // namespace xt
