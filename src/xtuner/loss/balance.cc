#include "xtuner/loss/balance.h"

#include "xtuner/core/status.h"

namespace xt {

double balance_loss(double* dprob_e, const double* count, const double* prob_sum, int64_t N,
                    int64_t E) {
  if (N == 0) {
    for (int64_t e = 0; e < E; ++e) dprob_e[e] = 0;
    return 0;
  }
  const double n2 = double(N) * double(N);
  double aux = 0;
  for (int64_t e = 0; e < E; ++e) {
    aux += count[e] * prob_sum[e];
    dprob_e[e] = double(E) * count[e] / n2;
  }
  return double(E) * aux / n2;
}

std::vector<double> BalanceGradient(const BalanceStats& stats, int64_t E, double coef,
                                    double weight) {
  std::vector<double> g(E, 0.0);
  balance_loss(g.data(), stats.count.data(), stats.prob_sum.data(), stats.rows, E);
  double mean = 0;
  for (double x : g) mean += x / double(E);
  for (double& x : g) x = (x - mean) * coef * weight;
  return g;
}

void BalanceStats::Add(const BalanceStats& o) {
  if (count.empty()) {
    count.assign(o.count.size(), 0.0);
    prob_sum.assign(o.prob_sum.size(), 0.0);
  }
  XT_CHECK(o.count.size() == count.size() && o.prob_sum.size() == prob_sum.size(),
           "BalanceStats::Add: different expert counts");
  for (size_t e = 0; e < count.size(); ++e) {
    count[e] += o.count[e];
    prob_sum[e] += o.prob_sum[e];
  }
  rows += o.rows;
}

double BalanceStats::Loss() const {
  if (count.empty()) return 0;
  std::vector<double> unused(count.size());
  return balance_loss(unused.data(), count.data(), prob_sum.data(), rows, int64_t(count.size()));
}

}  // namespace xt
