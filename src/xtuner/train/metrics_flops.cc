#include "xtuner/train/metrics_flops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "xtuner/core/status.h"

namespace xt {

namespace {
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
}  // namespace

int64_t MoeActiveParams(int64_t total_params, int64_t num_moe_layers, int64_t num_experts,
                        int64_t top_k, int64_t params_per_expert) {
  XT_CHECK(total_params >= 0 && num_moe_layers >= 0 && params_per_expert >= 0);
  XT_CHECK(top_k >= 0 && top_k <= num_experts, "top_k must be in [0, num_experts]");
  const int64_t inactive = num_moe_layers * (num_experts - top_k) * params_per_expert;
  XT_CHECK(inactive <= total_params, "the inactive experts outnumber the total parameters");
  return total_params - inactive;
}

double TrainingStepFlops(int64_t matmul_params, int64_t tokens, int64_t num_layers,
                         int64_t attn_dim, double sum_doc_len_sq, bool causal,
                         int64_t windowed_layers, double sum_windowed_len_sq) {
  XT_CHECK(windowed_layers >= 0 && windowed_layers <= num_layers);
  const double dense = 6.0 * double(matmul_params) * double(tokens);
  const double squares = double(num_layers - windowed_layers) * sum_doc_len_sq +
                         double(windowed_layers) * sum_windowed_len_sq;
  const double attention = 12.0 * double(attn_dim) * squares * (causal ? 0.5 : 1.0);
  return dense + attention;
}

double WindowedLenSq(int64_t n, int64_t window) {
  const double x = double(n), w = double(window);
  return window > 0 && n > window ? x * x - (x - w) * (x - w) : x * x;
}

double TrainingFlopsPerToken(int64_t matmul_params, int64_t num_layers, int64_t attn_dim,
                             int64_t seq_len, bool causal, int64_t windowed_layers,
                             int64_t window) {
  const double n = double(seq_len);
  return TrainingStepFlops(matmul_params, seq_len, num_layers, attn_dim, n * n, causal,
                           windowed_layers, WindowedLenSq(seq_len, window)) /
         n;
}

double AchievedFlopsPerDevice(double flops, double seconds, int64_t num_devices) {
  if (!(seconds > 0) || num_devices < 1) return kNaN;
  return flops / seconds / double(num_devices);
}

double Mfu(double achieved_flops_per_s_per_device, double peak_flops_per_s_per_device) {
  if (!(peak_flops_per_s_per_device > 0)) return kNaN;
  return achieved_flops_per_s_per_device / peak_flops_per_s_per_device;
}

double ExpertViolation(const std::vector<int64_t>& tokens_per_expert) {
  XT_CHECK(!tokens_per_expert.empty(), "an MoE layer has at least one expert");
  double sum = 0;
  int64_t max = 0;
  for (int64_t c : tokens_per_expert) {
    sum += double(c);
    max = std::max(max, c);
  }
  if (sum <= 0) return 0.0;
  const double mean = sum / double(tokens_per_expert.size());
  return double(max) / mean - 1.0;
}

double MaxExpertViolation(const std::vector<std::vector<int64_t>>& tokens_per_expert) {
  if (tokens_per_expert.empty()) return 0.0;
  double sum = 0;
  for (const auto& layer : tokens_per_expert) sum += ExpertViolation(layer);
  return sum / double(tokens_per_expert.size());
}

double WorstLayerExpertViolation(const std::vector<std::vector<int64_t>>& tokens_per_expert) {
  double worst = 0;
  for (const auto& layer : tokens_per_expert) worst = std::max(worst, ExpertViolation(layer));
  return worst;
}

}  // namespace xt
