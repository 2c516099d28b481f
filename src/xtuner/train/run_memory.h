// A run's memory against the machine it runs on (train/trainer.cc): the host's share of the
// fp32 state checked before the model loads, and the run summary's memory lines (with, on the
// CPU, the largest step on paper against the host's available memory).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>

#include "xtuner/dist/comm.h"
#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/config.h"
#include "xtuner/train/config.h"
#include "xtuner/train/progress_summary.h"

namespace xt {

// The host memory one rank's state takes once written: its fp32 parameters' shard (written as
// the model loads), and AdamW's moments of what trains (8 B a float), with, on the CPU, their
// gradients (4 B more; a GPU run's host gradients are never written).
int64_t HostStateBytes(const ShardedParams& store, bool on_gpu);

// "" where `need` bytes fit in `share` (bytes: a host's MemAvailable over its ranks); else the
// warning, naming both and what to do.
std::string HostStateWarning(int64_t need, int64_t share, bool on_gpu);

// Before the model loads (a collective over `world`): the warning where the largest rank's need
// exceeds the least share of any host's available memory, or "" (also where a rank cannot read
// MemAvailable). The kernel would kill the run mid-load, or it would swap.
std::string CheckHostState(const ShardedParams& store, bool on_gpu, Comm& world);

// The run summary's memory lines and memory_estimate_bytes (the largest rank's), for a run of
// `mc` (its total of parameters) on `mesh` over `store`, whose device holds `bf16_only` floats
// of this rank's shard in bf16 only (TrainBackend::Bf16OnlyFloats); on the CPU also the largest
// step against the host's available memory, whose warning goes to `log` (a collective over
// `world`).
void AddMemorySummary(const TrainConfig& cfg, const ModelConfig& mc, const Mesh& mesh,
                      const ShardedParams& store, int64_t bf16_only, Comm& world, std::FILE* log,
                      RunSummary* sum);

}  // namespace xt
