// The model of the tests of exports a unit at a time (tests/dist/comm_selftest.cc,
// tests/train/checkpoint_export_test.cc): a Qwen3-MoE of 17 MB in units of 4 MB or less, so that
// one unit resident is far less than the model.
#pragma once

#include <nlohmann/json.hpp>

namespace xt::testing {

inline nlohmann::json ExportModelJson() {
  return {{"model_type", "qwen3_moe"},
          {"vocab_size", 512},
          {"hidden_size", 256},
          {"num_hidden_layers", 4},
          {"num_attention_heads", 4},
          {"num_key_value_heads", 2},
          {"head_dim", 64},
          {"moe_intermediate_size", 128},
          {"num_experts", 8},
          {"num_experts_per_tok", 2},
          {"tie_word_embeddings", false}};
}

}  // namespace xt::testing
