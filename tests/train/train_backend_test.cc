// train.device: how the trainer drives a device backend (train/backend.h), checked here without
// a GPU through a stand-in registered as "cuda" that behaves like a device: it copies the host
// state in when made, computes on its own copy (its own model slabs and AdamW), and writes back
// only in SyncToHost. Whole runs must then equal the CPU backend's bit for bit, including
// checkpoints, resume and the export: any place the trainer reads the host state without
// syncing first would show stale parameters. The real CUDA backend is compared with the CPU in
// tests/cuda/train_cuda_test.cc (GPU only).
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>

#include "util/testing.h"
#include "util/tiny_run.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/optim/clip.h"
#include "xtuner/train/backend.h"
#include "xtuner/train/train_checkpoint.h"
#include "xtuner/train/trainer.h"

namespace xt {
namespace {

namespace fs = std::filesystem;
using testing::Losses;
using testing::Metric;
using testing::TinyRun;

int g_made = 0;   // backends made
int g_syncs = 0;  // SyncToHost calls

class StandInDevice : public TrainBackend {
 public:
  explicit StandInDevice(const TrainBackendArgs& a) : args_(a), model_(*a.model) {
    const int64_t n = a.store->shard_size();
    std::memcpy(model_.params().data(), a.store->params(), size_t(n) * 4);
    model_.SetRecompute(a.recompute);
    auto opt = AdamW::Create(a.adamw->config(), a.decay, n);
    XT_CHECK(opt.ok(), opt.status().message());
    adamw_ = std::make_unique<AdamW>(std::move(*opt));
    XT_CHECK(adamw_->Restore(a.adamw->exp_avg(), a.adamw->exp_avg_sq(), a.adamw->step()).ok(),
             "restore");
  }
  std::string Describe() const override { return "stand-in device"; }
  Status ZeroGrads() override {
    model_.ZeroGrads();
    return Status::OK();
  }
  Result<BalanceStats> RouterStats(const Batch& b) override { return model_.RouterStats(b); }
  Result<LossInfo> ForwardBackward(const Batch& b, double ce, double aux,
                                   const BalancePool& pool) override {
    return model_.ForwardBackward(b, ce, aux, pool);
  }
  Result<double> GradSumOfSquares() override {
    return sum_of_squares(model_.grads().f32(), model_.grads().numel());
  }
  Status Step(double lr, float grad_scale) override {
    adamw_->Step(model_.params().f32(), model_.grads().f32(), lr, grad_scale);
    return Status::OK();
  }
  Status AddToShard(const std::vector<ShardAdd>& adds) override {
    ApplyShardAdds(adds, model_.params().f32());  // one rank: the shard is the whole model
    return Status::OK();
  }
  Status SyncToHost() override {
    ++g_syncs;
    std::memcpy(args_.store->params(), model_.params().data(), size_t(model_.params().nbytes()));
    return args_.adamw->Restore(adamw_->exp_avg(), adamw_->exp_avg_sq(), adamw_->step());
  }
  int64_t recompute_layers() const override { return model_.recompute_layers(); }

 private:
  TrainBackendArgs args_;
  Transformer model_;
  std::unique_ptr<AdamW> adamw_;
};

Result<std::unique_ptr<TrainBackend>> MakeStandIn(const TrainBackendArgs& a) {
  ++g_made;
  return std::unique_ptr<TrainBackend>(std::make_unique<StandInDevice>(a));
}

Status NoDevice() { return Status::Error("stand-in: no device here"); }

Result<std::unique_ptr<TrainBackend>> NeverMade(const TrainBackendArgs&) {
  ADD_FAILURE() << "the backend was made although its probe failed";
  return Status::Error("made");
}

TEST(TrainBackend, UnknownDeviceIsAConfigError) {
  TrainConfig c = TinyRun("dev_bad");
  c.device = "gpu";
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("train.device must be cpu or cuda"), std::string::npos)
      << r.status().message();
}

TEST(TrainBackend, ABuildWithoutTheBackendSaysSoBeforeAnyWork) {
  RegisterTrainBackend("cuda", nullptr);  // as in a build without it, whatever ran before
  TrainConfig c = TinyRun("dev_none");
  c.device = "cuda";
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("built without that backend"), std::string::npos)
      << r.status().message();
  EXPECT_FALSE(fs::exists(c.work_dir + "/cache")) << "data was read before the check";
}

TEST(TrainBackend, AFailedProbeStopsTheRunBeforeAnyWork) {
  RegisterTrainBackend("cuda", &NeverMade, &NoDevice);
  TrainConfig c = TinyRun("dev_probe");
  c.device = "cuda";
  auto r = RunTraining(c, nullptr);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("no device here"), std::string::npos) << r.status().message();
  EXPECT_FALSE(fs::exists(c.work_dir + "/cache")) << "data was read before the probe";
}

// The same run on the CPU and on the stand-in device: identical losses, aux losses, gradient
// norms and checkpoints (written from the synced host state), with the router pre-pass (two
// micro-batches of the global balancing loss), recompute and clipping in use.
TEST(TrainBackend, ADeviceRunEqualsTheCpuRunBitForBit) {
  RegisterTrainBackend("cuda", &MakeStandIn);
  TrainConfig cpu = TinyRun("dev_cpu");
  cpu.checkpoint_every = 3;
  cpu.recompute = 0.5;
  cpu.clip_grad_norm = 0.05;  // small: clipping is active
  cpu.weight_decay = 0.1;
  TrainConfig dev = cpu;
  dev.work_dir = cpu.work_dir + "-device";
  dev.device = "cuda";
  ASSERT_TRUE(RunTraining(cpu, nullptr).ok());
  g_made = g_syncs = 0;
  auto r = RunTraining(dev, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(g_made, 1);
  EXPECT_EQ(g_syncs, 2) << "one sync before each of the two checkpoints";
  for (const char* key : {"loss", "aux_loss", "grad_norm"}) {
    const std::vector<double> a = Metric(cpu.work_dir, key), b = Metric(dev.work_dir, key);
    ASSERT_EQ(a.size(), 6u) << key;
    EXPECT_EQ(a, b) << key;
  }
  auto mc = ModelConfig::Load(cpu.model_config);
  ASSERT_TRUE(mc.ok());
  for (const char* step : {"step-00000003", "step-00000006"}) {
    auto pa = ReadCheckpointParams(cpu.work_dir + "/checkpoints/" + step, *mc);
    auto pb = ReadCheckpointParams(dev.work_dir + "/checkpoints/" + step, *mc);
    ASSERT_TRUE(pa.ok() && pb.ok()) << step;
    EXPECT_EQ(*pa, *pb) << step;
  }
}

// Resume on the device from a checkpoint: the backend starts from the loaded parameters, AdamW
// moments and step count, so steps 4..6 and the exported weights equal the uninterrupted run's;
// the exports during the run hold the device's parameters of their step.
TEST(TrainBackend, ADeviceRunResumesAndExportsExactly) {
  RegisterTrainBackend("cuda", &MakeStandIn);
  TrainConfig straight = TinyRun("dev_straight");
  straight.device = "cuda";
  straight.checkpoint_every = 3;
  straight.export_at_end = true;
  straight.export_dtype = "fp32";
  straight.export_every = 2;
  g_syncs = 0;
  ASSERT_TRUE(RunTraining(straight, nullptr).ok());
  // Before the exports of steps 2, 4 and 6 and the checkpoints of steps 3 and 6.
  EXPECT_EQ(g_syncs, 5);
  TrainConfig resumed = testing::ResumedRun(straight, 3);
  resumed.export_every = 0;
  g_syncs = 0;
  auto r = RunTraining(resumed, nullptr);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(g_syncs, 1) << "one sync, before the step-6 checkpoint, which the export then reads";
  const std::vector<double> a = Losses(straight.work_dir), b = Losses(resumed.work_dir);
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 3u);  // steps 4..6
  for (int i = 0; i < 3; ++i) EXPECT_EQ(a[3 + i], b[i]) << "step " << 4 + i;
  auto at_end = LoadHfModel(straight.work_dir + "/hf");
  auto resumed_end = LoadHfModel(resumed.work_dir + "/hf");
  ASSERT_TRUE(at_end.ok() && resumed_end.ok());
  const size_t bytes = size_t((*at_end)->params().nbytes());
  EXPECT_EQ(std::memcmp((*at_end)->params().data(), (*resumed_end)->params().data(), bytes), 0);
  // The exports during the run hold their step's parameters: the CPU run's, bit for bit.
  TrainConfig cpu = straight;
  cpu.work_dir = straight.work_dir + "-cpu";
  cpu.device = "cpu";
  cpu.checkpoint_every = 0;
  cpu.export_at_end = false;
  ASSERT_TRUE(RunTraining(cpu, nullptr).ok());
  for (const char* step : {"/hf-step-00000002", "/hf-step-00000004"}) {
    auto dev_export = LoadHfModel(straight.work_dir + step);
    auto cpu_export = LoadHfModel(cpu.work_dir + step);
    ASSERT_TRUE(dev_export.ok() && cpu_export.ok()) << step;
    EXPECT_EQ(std::memcmp((*dev_export)->params().data(), (*cpu_export)->params().data(), bytes), 0)
        << step;
  }
  auto mc = ModelConfig::Load(straight.model_config);
  ASSERT_TRUE(mc.ok());
  auto p6 = ReadCheckpointParams(straight.work_dir + "/checkpoints/step-00000006", *mc);
  ASSERT_TRUE(p6.ok());
  EXPECT_EQ(std::memcmp((*at_end)->params().data(), p6->data(), bytes), 0);
}

}  // namespace
}  // namespace xt
