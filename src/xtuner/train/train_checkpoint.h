// Resumable training checkpoints. One directory per save, work_dir/checkpoints/step-<8 digits>:
//   model/                 the parameters as a Hugging Face checkpoint in fp32 (loads anywhere)
//   optimizer.safetensors  AdamW state: exp_avg [N], exp_avg_sq [N] over the parameter slab
//   trainer_state.json     step, optimizer step, sampler position, skip counters, data key
// A save goes to "step-<n>.tmp" and is renamed into place only when complete, so a kill or a
// full disk at any moment leaves every earlier checkpoint whole; then all but the newest
// keep_last are deleted. Resuming restores everything the next step depends on, so N steps in
// one go and N/2 + resume + N/2 give bit-identical losses.
#pragma once

#include <cstdint>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/data/sampler.h"
#include "xtuner/model/transformer.h"
#include "xtuner/optim/adamw.h"

namespace xt {

struct TrainState {
  int64_t step = 0;  // optimizer steps completed (skipped ones included)
  SamplerState sampler;
  int nonfinite_consecutive = 0;
  int64_t nonfinite_total = 0;
  std::string data_key;  // the tokenized cache's key: resuming on other data is an error
};

// Saves into work_dir/checkpoints; `saved` receives the final directory.
Status SaveTrainCheckpoint(const std::string& work_dir, const Transformer& model,
                           const AdamW& optim, const TrainState& state, int64_t keep_last,
                           std::string* saved);

// The newest complete checkpoint in work_dir/checkpoints, or "" when there is none.
std::string FindLatestCheckpoint(const std::string& work_dir);

// Restores the model parameters, optimizer state and trainer state from a checkpoint directory.
// The model and optimizer must already have the checkpoint's shapes (same config).
Status LoadTrainCheckpoint(const std::string& dir, Transformer* model, AdamW* optim,
                           TrainState* state);

}  // namespace xt
