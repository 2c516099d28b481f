// Resumable training checkpoints, written by every rank in parallel. One directory per save,
// work_dir/checkpoints/step-<8 digits>:
//   config.json                         the model's Hugging Face config
//   shard-<r>-of-<N>.safetensors        rank r's shard: params, exp_avg, exp_avg_sq (F32, 1-D)
//   shards.json                         the index: for each file, the ranges of the whole
//                                       model's slab it holds ([global offset, size, offset])
//   trainer_state.json                  step, optimizer step, sampler position, skip counters,
//                                       data key, the mesh
// A LoRA run's checkpoint holds the parts of the slab that train (its adapters) and no more; its
// frozen weights are those of its base model (model.load_from), which trainer_state.json names
// with the base's fingerprint (HfWeightsFingerprint): resume and convert read the base from there
// and refuse one that changed.
// Every rank writes its file into "step-<n>.tmp"; after all have, rank 0 writes the index and
// the trainer state and renames the directory into place. So a kill, a dead rank or a full disk
// at any moment leaves every earlier checkpoint whole and this one not "latest"; then all but
// the newest keep_last are deleted. Resuming restores everything the next step depends on, on
// any mesh: each rank reads the ranges it owns now from whichever files hold them (resharding).
// `xtuner convert` turns a checkpoint into a Hugging Face model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/sampler.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/config.h"
#include "xtuner/optim/adamw.h"

namespace xt {

struct TrainState {
  int64_t step = 0;  // optimizer steps completed (skipped ones included)
  SamplerState sampler;
  int nonfinite_consecutive = 0;
  int64_t nonfinite_total = 0;
  std::string data_key;  // the tokenized cache's key: resuming on other data is an error
  // LoRA: the base model (absolute path) and its HfWeightsFingerprint.
  std::string lora_base, lora_base_fingerprint;
};

// This rank's part of the training state.
struct ShardState {
  const std::vector<OwnedRange>* owned = nullptr;  // what params and optim cover
  float* params = nullptr;
  AdamW* optim = nullptr;
};

// A collective over `world` (mesh.world ranks): saves into work_dir/checkpoints; `saved`
// receives the final directory. `state` matters on rank 0 only. An error on any rank leaves
// the step's directory unfinished (".tmp").
Status SaveTrainCheckpoint(Comm& world, const std::string& work_dir, const ModelConfig& cfg,
                           const Mesh& mesh, const ShardState& shard, const TrainState& state,
                           int64_t keep_last, std::string* saved);

// The newest complete checkpoint in work_dir/checkpoints, or "" when there is none.
std::string FindLatestCheckpoint(const std::string& work_dir);

// Restores this rank's shard (its parameters and optimizer state, on whatever mesh saved it)
// and the trainer state from a checkpoint directory of a model with config `cfg`. Error when the
// checkpoint's LoRA settings (ReadCheckpointLora) differ from cfg.lora. The moments are read in
// place (a fresh optimizer's pages of zeros stay uncommitted); after an error the shard's
// parameters and moments are undefined.
Status LoadTrainCheckpoint(const std::string& dir, const ModelConfig& cfg, const ShardState& shard,
                           TrainState* state);

// The LoRA settings of a checkpoint's run (its config.json's "xtuner_lora"; rank 0 without),
// with the dropout of the run that wrote it (trainer_state.json's "lora_dropout"; 0 if absent).
Result<LoraSpec> ReadCheckpointLora(const std::string& dir);

// The whole model's parameters (ParamLayout(cfg).total()) from a checkpoint (a LoRA run's: its
// base's weights from the base it names, or from `base_dir` when given, an error if that is gone
// or not the run's base by fingerprint, and its adapters).
Result<std::vector<float>> ReadCheckpointParams(const std::string& dir, const ModelConfig& cfg,
                                                const std::string& base_dir = "");

// The same parameters a unit at a time, for an export (SaveHfModelFrom; `xtuner convert`): Load(u)
// reads unit u (a LoRA run's: the base's weights of it and its adapters) into a slab of zero
// pages and gives back the pages of the unit read before, all but a LoRA run's adapters (which
// SaveLoraAdapter reads from slab() after). So it holds one unit of the model, not the model.
// Open checks what ReadCheckpointParams checks before it reads (the base's fingerprint).
class CheckpointExportParams : public ExportParams {
 public:
  static Result<std::unique_ptr<CheckpointExportParams>> Open(const std::string& dir,
                                                              const ModelConfig& cfg,
                                                              const std::string& base_dir = "");
  const float* slab() const override { return slab_.get(); }
  Status Load(int64_t unit) override;

 private:
  CheckpointExportParams(std::string dir, std::string base, const ModelConfig& cfg);

  std::string dir_, base_;  // base_: a LoRA run's base model
  ModelConfig cfg_;
  ParamLayout layout_;
  std::shared_ptr<float> slab_;
  int64_t loaded_ = -1;
};

}  // namespace xt
