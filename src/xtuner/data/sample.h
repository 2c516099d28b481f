// Sample: one tokenized training example.
#pragma once

#include <cstdint>
#include <vector>

namespace xt {

// input_ids (n) and labels (n), aligned and UNSHIFTED as HF takes them: labels[t] is
// input_ids[t] where the token is trained on and -100 elsewhere (prompts, system and user turns,
// tool results). The model's loss at position t predicts labels[t + 1] (see model/batch.h).
// The label of a token without loss (HF's ignore_index).
constexpr int32_t kIgnoredLabel = -100;

struct Sample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
};

}  // namespace xt
