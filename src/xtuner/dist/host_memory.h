// The host as the trainers' checks before their first step see it (train/trainer.cc,
// cuda/train_backend_cuda.cc, plan/plan.h CheckStepFits): the memory the kernel says is
// available, and which ranks share the host (or a GPU on it).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "xtuner/dist/comm.h"

namespace xt {

// MemAvailable of /proc/meminfo in bytes (memory a new allocation can take without swapping);
// -1 where it cannot be read.
int64_t AvailableHostMemory();

// This host's name, then `extra` (e.g. a GPU's UUID), as 52 bits of FNV-1a: a non-negative
// double, exact, so that ranks can compare them after a sum (AllRankIds).
double HostId(const void* extra = nullptr, size_t extra_bytes = 0);

// Every rank's `id` of `group`, by rank (a collective: each rank gives its own).
std::vector<double> AllRankIds(Comm& group, double id);

// How many ranks of `group`, this one included, run on this host (the same host name). A
// collective over `group`.
int RanksOnThisHost(Comm& group);

}  // namespace xt
