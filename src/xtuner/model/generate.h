// Text generation with a KV cache: the prompt runs once (prefill), then one token per step.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/dist/comm.h"
#include "xtuner/model/transformer.h"

namespace xt {

// The eos_token_id of a generation_config.json (one id or a list); none when the file does not
// exist or has no such key. Errors name the file: not JSON, or ids that are not token ids.
Result<std::vector<int64_t>> GenerationEosIds(const std::string& path);

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  double temperature = 0.0;  // 0: greedy (argmax, lowest id on ties)
  double top_p = 1.0;        // nucleus sampling when < 1 (with temperature > 0)
  int64_t top_k = 0;         // keep the k most likely tokens when > 0 (with temperature > 0)
  uint64_t seed = 0;
  std::vector<int32_t> stop_ids;  // generation ends after emitting one of these
};

// Returns the generated tokens (a stop token, when hit, is the last one). The model is only read.
// Errors: empty prompt, ids outside the vocabulary, bad options.
Result<std::vector<int32_t>> Generate(Transformer& model, const std::vector<int32_t>& prompt,
                                      const GenerateOptions& options);

// Generate(model, prompts[i], options) for every i, shared over the ranks of `world`, which all
// call it with the same prompts: rank r runs prompts r, r + W, ... (W ranks), `batch` of them
// decoded together (Transformer::ForwardCachedMany), so a model sharded over the ranks (ZeRO-3,
// expert parallelism) is gathered once per decoding step of a batch, never whole. Every rank
// returns every output. Errors as Generate's (the first bad prompt named), before anything runs.
Result<std::vector<std::vector<int32_t>>> GenerateMany(
    Transformer& model, Comm& world, const std::vector<std::vector<int32_t>>& prompts,
    const GenerateOptions& options, int64_t batch = 16);

// Picks the next token from logits (V) as the options say; `rng_state` advances.
int32_t SampleToken(const std::vector<float>& logits, const GenerateOptions& options,
                    uint64_t* rng_state);

}  // namespace xt
