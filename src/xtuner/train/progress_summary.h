// The block printed once before the first step: what is being trained, on what, in how much
// memory. Plain numbers in (the trainer gathers them), an aligned block out:
//
//   model   parameters  30.5B (3.4B active)
//           layers      48
//           experts     128 routed, top-8
//   data    samples     12.3K (12 dropped, 3 truncated)
//           tokens      45.6M (37.5% masked)
//   memory  estimate    12.3 GiB
//
// Sections and labels are padded to their longest; a section's name is printed on its first row
// only. Fields left at their "unknown" default (-1, or NaN) are left out, and so is a section
// with nothing in it; a dense model (num_experts == 0) has no experts row and no "active".
#pragma once

#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

namespace xt {

struct RunSummary {
  // model
  int64_t total_params = -1;
  int64_t active_params = -1;  // MoeActiveParams (metrics_flops.h)
  int64_t num_layers = -1;
  int64_t num_experts = 0;  // routed experts per MoE layer; 0 for a dense model
  int64_t top_k = 0;
  // data
  int64_t samples = -1;                                               // samples kept for training
  int64_t tokens = -1;                                                // tokens of those samples
  double masked_fraction = std::numeric_limits<double>::quiet_NaN();  // tokens with no loss
  int64_t dropped = 0;    // samples dropped (empty, no loss token, unreadable)
  int64_t truncated = 0;  // samples cut to the maximum length
  // memory
  int64_t memory_estimate_bytes = -1;  // per device

  // More rows, e.g. {"run", "steps", "1000"}: each goes after the last row of its section, or at
  // the end (starting that section) when there is none yet.
  struct Row {
    std::string section, label, value;
  };
  std::vector<Row> extra;
};

// The rows of the block, in print order (for tests and other front ends).
std::vector<RunSummary::Row> SummaryRows(const RunSummary& s);
// Prints the block to `out` (not owned), flushed.
void PrintRunSummary(std::FILE* out, const RunSummary& s);

}  // namespace xt
