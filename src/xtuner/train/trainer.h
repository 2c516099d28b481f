// The training loop: `xtuner train` and `xtuner sft` run RunTraining on a TrainConfig.
//   setup: model (HF weights, or random from a config.json), data (cache, packing, sampler),
//          AdamW + schedule, resume from a checkpoint, metrics sinks, a start-of-run summary;
//   step:  a global batch of rows in micro-batches, every loss token weighted by 1 / (loss
//          tokens of the global batch); clip; skip a non-finite step; AdamW; metrics;
//   end:   checkpoint, Hugging Face export (with the tokenizer), optional evaluation.
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "xtuner/core/status.h"
#include "xtuner/train/config.h"

namespace xt {

class Comm;

struct TrainResult {
  int64_t steps_done = 0;       // optimizer steps completed in the whole run (incl. resumed)
  double last_loss = 0;         // NaN when this run took no step (resumed a finished run)
  std::string last_checkpoint;  // "" when none was written
  std::string export_dir;       // "" when no export was written
  bool interrupted = false;     // stopped early by RequestStop (a checkpoint was saved)
  double eval_accuracy = -1;    // in [0, 1], or -1 without eval.file
};

// Runs the job described by `cfg` (validated first). Progress and the summary go to `log`.
// Distributed: every rank of `world` (null: this process alone) calls it with the same config;
// the mesh is world = dp × ep (cfg.ep), each rank keeps its ZeRO-3 shard and trains on its
// 1/world of each global batch; rank 0 alone writes metrics.jsonl, TensorBoard, the config
// and exports (pass log = null on the others). The result's losses are global on every rank.
// An error on one rank can leave the others waiting in a collective (the backend's start-up, a
// step, rank 0 failing to write its config or metrics): with more than one rank, end the job on
// any error with world->Abort, as `xtuner train` does.
Result<TrainResult> RunTraining(const TrainConfig& cfg, std::FILE* log, Comm* world = nullptr);

// Asks a running RunTraining to stop after its current step, save a checkpoint and return
// (async-signal-safe; any thread may call it).
void RequestStop();
// Forgets a stop request (before installing the signal handling of a new run: a request made
// while the run starts up, e.g. during MPI's start, is then kept).
void ClearStopRequest();

}  // namespace xt
