#include "xtuner/dist/mesh.h"

namespace xt {

std::string Mesh::ToString() const {
  return std::to_string(world) + " ranks = dp " + std::to_string(dp) + " x ep " +
         std::to_string(ep);
}

Result<Mesh> MakeMesh(int world, int rank, int ep, const ModelConfig& cfg) {
  const std::string w = std::to_string(world), e = std::to_string(ep);
  if (ep < 1) return Status::Error("parallel.ep must be at least 1, not " + e);
  if (world % ep != 0)
    return Status::Error("parallel.ep = " + e + " does not divide the " + w +
                         " ranks (world = dp x ep)");
  if (ep > 1 && !cfg.is_moe())
    return Status::Error("parallel.ep = " + e + ", but the model has no experts (dense " +
                         cfg.model_type + ")");
  if (ep > 1 && cfg.num_experts % ep != 0)
    return Status::Error("parallel.ep = " + e + " does not divide the model's " +
                         std::to_string(cfg.num_experts) + " experts");
  Mesh m;
  m.world = world;
  m.ep = ep;
  m.dp = world / ep;
  m.rank = rank;
  m.dp_rank = rank / ep;
  m.ep_rank = rank % ep;
  return m;
}

}  // namespace xt
