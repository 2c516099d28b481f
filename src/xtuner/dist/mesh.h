// Mesh: world = dp × ep ranks. Rank r is (dp_rank, ep_rank) = (r / ep, r % ep): the ranks of
// one ep group are consecutive and hold the experts between them (ep_rank p holds experts
// [p * E / ep, (p + 1) * E / ep)); the ranks of one dp group hold the same experts.
#pragma once

#include <string>

#include "xtuner/core/status.h"
#include "xtuner/model/config.h"

namespace xt {

struct Mesh {
  int world = 1, dp = 1, ep = 1;
  int rank = 0, dp_rank = 0, ep_rank = 0;

  int64_t experts_per_rank(const ModelConfig& cfg) const { return cfg.num_experts / ep; }
  int64_t first_expert(const ModelConfig& cfg) const { return ep_rank * experts_per_rank(cfg); }
  std::string ToString() const;  // "dp 2 × ep 2"
};

// Errors, before any work: ep < 1, world not divisible by ep, ep > 1 for a dense model, experts
// not divisible by ep.
Result<Mesh> MakeMesh(int world, int rank, int ep, const ModelConfig& cfg);

}  // namespace xt
