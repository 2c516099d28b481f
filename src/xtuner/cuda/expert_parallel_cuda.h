// Expert parallelism's row moves on GPUs: the device twins of ExpertDispatch and ExpertCombine
// (dist/expert_parallel.h; the exchange plan, PlanExpertExchange, is the same host code), over an
// NcclComm whose float collectives take device memory on `stream`.
//
//   sorted rows (A, H), by global expert --ExpertDispatchCuda--> received rows (R, H), by local
//   expert received results (R, H)              --ExpertCombineCuda---> results (A, H), in sorted
//   order
//
// The regrouping between "by source rank" (how the all-to-all delivers) and "by local expert"
// (what the grouped GEMMs need) is a row gather on the device by the maps below.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"
#include "xtuner/dist/expert_parallel.h"

namespace xt::cuda {

// The plan's regrouping as two gather maps (host; the caller uploads them as int32):
//   grouped_of_received (R): to_grouped, received row i -> its row by expert (for Combine);
//   received_of_grouped (R): its inverse, row j by expert -> the received row (for Dispatch).
struct EpRowMaps {
  std::vector<int32_t> grouped_of_received, received_of_grouped;
};
// Errors when R does not fit int32 or to_grouped is not a permutation of [0, R).
Result<EpRowMaps> MakeEpRowMaps(const EpExchange& x);

// xr (R, H) = the rows of the group for this rank's experts, by local expert, from xs (A, H)
// sorted by global expert. received_of_grouped: EpRowMaps' map on the device. A collective over
// `ep` (every rank calls it, in the same order).
Status ExpertDispatchCuda(Comm& ep, const EpExchange& x, const int32_t* received_of_grouped,
                          const float* xs, int64_t H, float* xr, void* stream);

// The same for rows held in bf16 (uint16_t bits; bf16 mode's rows, which feed only bf16
// products): half the bytes on the wire. The collective moves them as float pairs, so H must be
// even (an error otherwise).
Status ExpertDispatchCuda(Comm& ep, const EpExchange& x, const int32_t* received_of_grouped,
                          const uint16_t* xs, int64_t H, uint16_t* xr, void* stream);

// ys (A, H) in sorted order = the results yr (R, H) (by local expert) back at the ranks their
// rows came from. grouped_of_received: EpRowMaps' map on the device. A collective over `ep`.
Status ExpertCombineCuda(Comm& ep, const EpExchange& x, const int32_t* grouped_of_received,
                         const float* yr, int64_t H, float* ys, void* stream);

}  // namespace xt::cuda
