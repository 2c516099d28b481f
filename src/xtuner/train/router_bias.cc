#include "xtuner/train/router_bias.h"

#include "xtuner/core/status.h"

namespace xt {

std::vector<float> RouterBiasDeltas(const std::vector<int64_t>& tokens_per_expert, double speed) {
  const int64_t E = int64_t(tokens_per_expert.size());
  double sum = 0;
  for (int64_t c : tokens_per_expert) sum += double(c);
  std::vector<float> delta(E, 0.0f);
  for (int64_t e = 0; e < E; ++e) {
    // Compared as c_e * E against the total: exact in integers, so a balanced expert gets 0.
    const double c = double(tokens_per_expert[e]) * double(E);
    delta[e] = c < sum ? float(speed) : c > sum ? -float(speed) : 0.0f;
  }
  return delta;
}

std::vector<ShardAdd> RouterBiasShardAdds(
    const ModelConfig& cfg, const std::vector<std::vector<int64_t>>& tokens_per_expert,
    double speed, const std::vector<OwnedRange>& owned) {
  std::vector<ShardAdd> adds;
  if (cfg.router != RouterKind::kSigmoidGroup || speed == 0) return adds;
  const ParamLayout whole(cfg);
  size_t moe = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    const int64_t bias = whole.layers[l].router_bias;
    if (bias < 0) continue;
    XT_CHECK(
        moe < tokens_per_expert.size() && int64_t(tokens_per_expert[moe].size()) == cfg.num_experts,
        "router bias update: tokens per expert of a different model");
    const std::vector<float> delta = RouterBiasDeltas(tokens_per_expert[moe++], speed);
    for (const OwnedRange& r : owned)
      for (int64_t e = 0; e < cfg.num_experts; ++e)
        if (bias + e >= r.global && bias + e < r.global + r.size)
          adds.push_back({r.shard + bias + e - r.global, delta[e]});
  }
  return adds;
}

void ApplyShardAdds(const std::vector<ShardAdd>& adds, float* shard) {
  for (const ShardAdd& a : adds) shard[a.at] += a.delta;
}

}  // namespace xt
