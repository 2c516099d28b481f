// Expert parallelism, dropless: the ep ranks of a group each hold E / ep experts (rank p holds
// [p * El, (p + 1) * El)). After the permute, a rank's assignment rows are sorted by global
// expert; rows for expert e go to the rank that holds e and come back, in the same order,
// before the weighted un-permute. Counts travel first, so every rank knows what it receives;
// an expert that receives no row is fine.
//
//   sorted rows (A, H), by global expert --Dispatch--> received rows (R, H), by local expert
//   received results (R, H)              --Combine---> results (A, H), back in sorted order
// The backward uses the same two moves: Dispatch the output gradients, Combine the input ones.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/dist/comm.h"

namespace xt {

struct EpExchange {
  std::vector<int64_t> send_rows, recv_rows;  // (ep): rows to and from each rank
  std::vector<int32_t> local_offsets;         // (El + 1): received rows of each local expert
  std::vector<int64_t> to_grouped;  // (R): received row i (by source rank) -> its row by expert
  int64_t num_received() const { return int64_t(to_grouped.size()); }
};

// The element counts of rows of H floats: rows (n) times H (the all-to-all's counts).
std::vector<int64_t> RowElements(const std::vector<int64_t>& rows, int64_t H);

// Exchanges the per-expert row counts: offsets (E + 1) are this rank's sorted rows per global
// expert (moe_plan's offsets). E must be a multiple of ep.size(). A collective over ep.
EpExchange PlanExpertExchange(Comm& ep, const int32_t* offsets, int64_t E);

// xr (R, H) by local expert = the rows of every rank for this rank's experts; xs (A, H) sorted.
void ExpertDispatch(Comm& ep, const EpExchange& x, const float* xs, int64_t H, float* xr);

// ys (A, H) sorted = the results yr (R, H) (by local expert) sent back to their ranks.
void ExpertCombine(Comm& ep, const EpExchange& x, const float* yr, int64_t H, float* ys);

}  // namespace xt
