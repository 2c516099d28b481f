#include "xtuner/loss/balance.h"

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

}  // namespace xt
