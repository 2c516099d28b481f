// libFuzzer target for PEFT LoRA adapters (model/lora.h): the input is adapter_config.json, a
// NUL byte, then adapter_model.safetensors, written to a directory that LoraSpecOfAdapter and
// ReadLoraAdapter then read for a tiny Qwen3 (the shape of tests/data/qwen3_dense_tiny). Any
// input gives a spec or an error, never a crash, a sanitizer report, an abort or a hang; an
// accepted spec names layers the model has, with a rank in range; an accepted adapter hands
// every adapter tensor of the layout over exactly once, finite or not but of its shape.
// See fuzz/README.md.
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "xtuner/model/lora.h"

namespace {

const xt::ModelConfig& Model() {
  static const xt::ModelConfig cfg = [] {
    const nlohmann::json j = {{"model_type", "qwen3"},
                              {"vocab_size", 320},
                              {"hidden_size", 64},
                              {"num_hidden_layers", 2},
                              {"num_attention_heads", 4},
                              {"num_key_value_heads", 2},
                              {"head_dim", 16},
                              {"intermediate_size", 96}};
    auto c = xt::ModelConfig::FromJson(j, "lora_adapter_fuzz");
    if (!c.ok()) std::abort();
    return *c;
  }();
  return cfg;
}

const std::string& Dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/lora_adapter_fuzz_XXXXXX";
    if (!mkdtemp(tmpl)) std::abort();
    return std::string(tmpl);
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const uint8_t* nul = std::find(data, data + size, uint8_t(0));
  std::ofstream(Dir() + "/adapter_config.json", std::ios::binary)
      .write(reinterpret_cast<const char*>(data), nul - data);
  std::ofstream weights(Dir() + "/adapter_model.safetensors", std::ios::binary);
  if (nul < data + size)
    weights.write(reinterpret_cast<const char*>(nul + 1), data + size - nul - 1);
  weights.close();

  xt::ModelConfig cfg = Model();
  auto spec = xt::LoraSpecOfAdapter(Dir(), cfg);
  if (!spec.ok()) return 0;
  if (spec->rank < 1 || spec->rank > 65536 || spec->targets.empty()) std::abort();
  const std::vector<std::string> known = xt::LoraTargetNames(cfg);
  for (const std::string& t : spec->targets)
    if (std::find(known.begin(), known.end(), t) == known.end()) std::abort();
  cfg.lora = *spec;
  const xt::ParamLayout layout(cfg);
  int64_t adapters = 0, visited = 0;
  for (const xt::ParamInfo& p : layout.params()) adapters += p.lora;
  const xt::Status st =
      xt::ReadLoraAdapter(Dir(), cfg, layout, [&](const xt::ParamInfo& p, const float* w) {
        if (!p.lora) std::abort();
        volatile float sink = 0;
        for (int64_t i = 0; i < xt::NumElements(p.shape); ++i) sink = sink + w[i];
        ++visited;
      });
  if (st.ok() && visited != adapters) std::abort();
  return 0;
}
