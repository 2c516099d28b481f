// Random initialisation for training from a config.json alone, as transformers initialises
// these models: every matrix (embeddings, projections, router, experts) ~ N(0, std^2), every
// norm weight = 1. The sequence is fixed by the seed on every platform (own generator).
#pragma once

#include <cstdint>

#include "xtuner/model/transformer.h"

namespace xt {

void InitRandom(Transformer* model, double std, uint64_t seed);

}  // namespace xt
