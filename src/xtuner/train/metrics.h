// StepMetrics: what one optimizer step reports to the user. The trainer fills one record per
// optimizer step (on rank 0, with values already reduced over all ranks) and hands it to every
// sink: metrics.jsonl (metrics_jsonl.h), TensorBoard (tensorboard.h, through DashboardScalars
// below) and the progress display (progress.h). How the derived numbers are computed (FLOPs,
// MFU, the expert-balance violation) is in metrics_flops.h.
//
// A quantity that is unknown or does not apply is NaN (never a made-up 0): mfu without a peak,
// aux_loss and the violations on a dense model. NaN is written as JSON null.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/core/status.h"

namespace xt {

struct StepMetrics {
  static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

  int64_t step = 0;        // optimizer steps completed, this one included (the first step is 1)
  double loss = kNaN;      // the objective that was minimised: ce_loss + aux coefficient * aux_loss
  double ce_loss = kNaN;   // mean cross-entropy per loss token of the global batch
  double aux_loss = kNaN;  // MoE load-balancing loss, before its coefficient; NaN if dense
  double grad_norm = kNaN;     // global L2 norm of the gradient, before clipping
  double lr = kNaN;            // learning rate used by this step
  int64_t tokens = 0;          // tokens in this step's global batch (all ranks, padding excluded)
  double tokens_per_s = kNaN;  // tokens / step_time_s: global throughput, not per device
  double tflops = kNaN;        // achieved model TFLOP/s per device (metrics_flops.h)
  double mfu = kNaN;           // model FLOPs utilisation in [0, 1] per device; NaN: peak unknown
  double max_expert_violation = kNaN;  // XTuner's maxvio: mean over MoE layers (metrics_flops.h)
  double max_expert_violation_worst = kNaN;  // the same per-layer quantity, max over layers
  std::vector<std::vector<int64_t>> tokens_per_expert;  // [moe layer][expert], summed over ranks
  // High-water mark of this process's memory: resident host memory on the CPU; on a GPU
  // (train.device = "cuda") its device memory's (TrainBackend::PeakMemoryBytes).
  int64_t peak_memory_bytes = 0;
  double masked_fraction = kNaN;  // share of this step's tokens whose label is -100 (no loss)
  bool skipped = false;           // the update was not applied (non-finite loss or gradient)
  double step_time_s = kNaN;      // wall seconds of this step
  double elapsed_s = kNaN;        // wall seconds since this run (process) started
};

// One flat JSON object, every field above under its own name, always all keys (a stable
// schema); NaN becomes null.
nlohmann::json ToJson(const StepMetrics& m);
// The inverse of ToJson. Missing keys keep their defaults; null reads as NaN. Fails, naming
// `source` and the key, on a key of the wrong type or a missing "step".
Result<StepMetrics> StepMetricsFromJson(const nlohmann::json& j, const std::string& source);

// The scalars a dashboard plots, as (tag, value), in a fixed order. Tags are grouped by prefix:
// train/ (loss, ce_loss, aux_loss, grad_norm, lr, skipped), perf/ (tokens_per_s, tflops, mfu,
// step_time_s), memory/ (peak_gib), data/ (tokens, masked_fraction), moe/ (maxvio,
// maxvio_worst_layer). Values that do not apply are left out: aux_loss and moe/* when
// tokens_per_expert is empty (dense), mfu when NaN. A NaN loss or grad_norm is kept (a diverged
// run must show it).
std::vector<std::pair<std::string, double>> DashboardScalars(const StepMetrics& m);

}  // namespace xt
