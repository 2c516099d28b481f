// The MoE load-balancing auxiliary loss exactly as transformers' load_balancing_loss_func
// defines it for Qwen3-MoE and Mixtral: the router outputs of all MoE layers are concatenated
// into N = layers * T rows, then
//   aux = E * sum_e (count_e / N) * (prob_sum_e / N)
// where count_e counts the top-k selections of expert e and prob_sum_e sums its softmax
// probability over all N rows. (Not the mean of per-layer losses: the layers are pooled.)
#pragma once

#include <cstdint>
#include <vector>

namespace xt {

// The pooled statistics behind the balancing loss. They add: the statistics of a union of
// batches (micro-batches, ranks) are the sum of theirs, so the loss of a whole global batch can be
// formed from its parts. Empty for a dense model.
struct BalanceStats {
  std::vector<double> count;     // (E) top-k selections of each expert
  std::vector<double> prob_sum;  // (E) its softmax probability summed over the rows
  int64_t rows = 0;              // N: MoE layers * tokens

  void Add(const BalanceStats& o);
  // The balancing loss of these statistics (0 when empty).
  double Loss() const;
};

// count, prob_sum (E): the pooled statistics (ops::moe_balance_stats over every MoE layer).
// Returns aux; dprob_e (E) receives d aux / d probs[n, e] = E * count_e / N^2, the same for every
// row n (the top-k selection carries no gradient).
double balance_loss(double* dprob_e, const double* count, const double* prob_sum, int64_t N,
                    int64_t E);

// What a backward feeds the router: d aux / d probs of `stats` (E experts), centred over the
// experts and times coef * weight. The softmax backward ignores a constant added to d probs (the
// probabilities sum to 1); without the common part the fp32 softmax backward would no longer
// cancel most of its digits, since the experts' gradients differ only by their counts.
std::vector<double> BalanceGradient(const BalanceStats& stats, int64_t E, double coef,
                                    double weight);

}  // namespace xt
