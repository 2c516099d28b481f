// Random initialisation for training from a config.json alone, as transformers initialises
// these models: every matrix (embeddings, projections, router, experts) ~ N(0, std^2), every
// norm weight = 1; LoRA adapters as PEFT initialises them (InitLoraTensor, model/lora.h). The
// sequence is fixed by the seed on every platform (own generator).
#pragma once

#include <cstdint>

#include "xtuner/model/transformer.h"

namespace xt {

void InitRandom(Transformer* model, double std, uint64_t seed);

// The values InitRandom gives one tensor of the whole model's layout: out (numel of info.shape).
// Each tensor's stream depends on the seed and its offset in the whole model's slab only.
void InitTensor(const ParamInfo& info, double std, uint64_t seed, float* out);

}  // namespace xt
