// The host's memory as the CPU trainer's check before its first step sees it (train/trainer.cc,
// plan/plan.h CheckStepFits): what the kernel says is available, and how many ranks share it.
#pragma once

#include <cstdint>

#include "xtuner/dist/comm.h"

namespace xt {

// MemAvailable of /proc/meminfo in bytes (memory a new allocation can take without swapping);
// -1 where it cannot be read.
int64_t AvailableHostMemory();

// How many ranks of `group`, this one included, run on this host (the same host name). A
// collective over `group`.
int RanksOnThisHost(Comm& group);

}  // namespace xt
