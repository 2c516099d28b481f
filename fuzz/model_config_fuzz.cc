// libFuzzer target for config.json (ModelConfig::FromJson): any JSON gives a config or an error
// Status, never a crash, a sanitizer report, an abort or a hang; and a config it accepts
//   - keeps the invariants the model relies on (heads a multiple of KV heads, top-k within the
//     experts, one MoE flag per layer, positive sizes, an even RoPE width, ...);
//   - survives its own export: ToJson() parses back to a config with the same ToJson() (the
//     config.json xtuner writes means the model it was read as);
//   - when small, lays out its parameters (ParamLayout) with each tensor inside the slab.
// See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>

#include "xtuner/model/config.h"
#include "xtuner/model/params.h"

namespace {

// Parameters of the model, roughly (in double, so that absurd sizes cannot overflow), to skip
// laying out models too large to lay out quickly.
double RoughParams(const xt::ModelConfig& c) {
  const double H = double(c.hidden_size), L = double(c.num_layers);
  const double attn = H * double(c.num_heads + 2 * c.num_kv_heads) * double(c.head_dim) * 2;
  const double experts = double(c.num_experts) * 3 * H * double(c.moe_intermediate_size);
  const double dense = 3 * H * double(c.intermediate_size);
  const double mla = double(c.q_lora_rank + c.kv_lora_rank) * (H + double(c.num_heads) * 512);
  return double(c.vocab_size) * H * 2 + L * (attn + experts + dense + mla + double(c.num_experts));
}

bool Invariants(const xt::ModelConfig& c) {
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 ||
      c.num_kv_heads <= 0 || c.head_dim <= 0)
    return false;
  if (c.num_heads % c.num_kv_heads != 0) return false;
  if (c.rope_dim() <= 0 || c.rope_dim() % 2 != 0) return false;
  if (int64_t(c.layer_is_moe.size()) != c.num_layers) return false;
  if (c.is_moe()) {
    if (c.top_k <= 0 || c.top_k > c.num_experts || c.moe_intermediate_size <= 0) return false;
    if (c.n_group <= 0 || c.num_experts % c.n_group != 0 || c.topk_group > c.n_group) return false;
  } else if (c.num_moe_layers() != 0) {
    return false;
  }
  if (c.num_moe_layers() < c.num_layers && c.intermediate_size <= 0) return false;
  if (c.fp8_weights && (c.fp8_block[0] <= 0 || c.fp8_block[1] <= 0)) return false;
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const nlohmann::json j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  auto c = xt::ModelConfig::FromJson(j, "fuzz.json");
  if (!c.ok()) {
    if (c.status().message().rfind("fuzz.json", 0) != 0) __builtin_trap();  // names the file
    return 0;
  }
  if (!Invariants(*c)) __builtin_trap();
  const nlohmann::json out = c->ToJson();
  auto back = xt::ModelConfig::FromJson(out, "export.json");
  if (!back.ok() || back->ToJson() != out || back->layer_is_moe != c->layer_is_moe)
    __builtin_trap();
  if (RoughParams(*c) < 2e6) {
    const xt::ParamLayout layout(*c);
    for (const xt::ParamInfo& p : layout.params())
      if (p.offset < 0 || p.offset + xt::NumElements(p.shape) > layout.total()) __builtin_trap();
  }
  return 0;
}
