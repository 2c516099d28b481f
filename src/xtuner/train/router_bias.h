// DeepSeek-V3's auxiliary-loss-free load balancing (DeepSeek-V3 technical report, section
// 2.1.2): the router picks experts by score + e_score_correction_bias, and after every optimizer
// step each MoE layer's bias moves by `speed` towards balance:
//   b_e += speed * sign(mean_e' c_e' - c_e)
// with c_e the tokens routed to expert e in that step (all micro-batches and ranks): an
// overloaded expert becomes less attractive, an underloaded one more. The bias changes the choice
// only, never the weights, so no gradient is involved.
#pragma once

#include <cstdint>
#include <vector>

#include "xtuner/dist/sharded_params.h"
#include "xtuner/model/config.h"

namespace xt {

// The update of one layer's bias (E) from its step's tokens per expert (E).
std::vector<float> RouterBiasDeltas(const std::vector<int64_t>& tokens_per_expert, double speed);

// One addition to an element of a rank's shard: shard[at] += delta.
struct ShardAdd {
  int64_t at;
  float delta;
};

// The update of every MoE layer (tokens_per_expert: per MoE layer, in layer order, E each) as
// additions to the bias elements this rank's shard holds (`owned`: ShardedParams'). Every rank
// passes the same counts, so the ranks together update each bias once. Empty for a model
// without a correction bias, or when speed is 0.
std::vector<ShardAdd> RouterBiasShardAdds(
    const ModelConfig& cfg, const std::vector<std::vector<int64_t>>& tokens_per_expert,
    double speed, const std::vector<OwnedRange>& owned);

// shard[a.at] += a.delta for each addition (a host shard: ShardedParams::params() of the rank
// the additions were made for).
void ApplyShardAdds(const std::vector<ShardAdd>& adds, float* shard);

}  // namespace xt
