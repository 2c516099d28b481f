#include "xtuner/plan/frozen_bf16.h"

#include <algorithm>
#include <map>

#include "xtuner/core/status.h"

namespace xt {
namespace {

// Appends [at, at + n) to `out`, merged with its last range where they touch.
void Append(SlabRanges& out, int64_t at, int64_t n) {
  if (n <= 0) return;
  if (!out.empty() && out.back().first + out.back().second >= at)
    out.back().second = std::max(out.back().second, at + n - out.back().first);
  else
    out.push_back({at, n});
}

}  // namespace

bool HoldsFrozenInBf16Only(const ModelConfig& cfg, bool bf16, int64_t ranks, bool allowed) {
  return allowed && bf16 && ranks >= 1 && cfg.lora.enabled();
}

SlabRanges Bf16OnlyRanges(const ParamLayout& layout) {
  // Where each listed weight starts, and whether it is a matmul's. Every tensor of the slab
  // starts at a listed offset or follows one in the same block (a dense MLP's up_proj after its
  // gate_proj, an expert's weights after the expert before it): it is of that block's kind.
  std::map<int64_t, bool> starts;
  auto mark = [&](int64_t at, bool matmul) {
    if (at >= 0) starts[at] = matmul;
  };
  mark(layout.embed, false);
  mark(layout.final_norm, false);
  if (layout.lm_head != layout.embed) mark(layout.lm_head, true);
  for (const LayerOffsets& o : layout.layers) {
    for (int64_t at : {o.ln1,
                       o.q_norm,
                       o.k_norm,
                       o.ln2,
                       o.router,
                       o.q_a_norm,
                       o.kv_a_norm,
                       o.router_bias,
                       o.bq,
                       o.bk,
                       o.bv,
                       o.bo,
                       o.sinks,
                       o.router_logit_bias,
                       o.gate_up_bias,
                       o.down_bias,
                       o.gate_up_lora_a,
                       o.gate_up_lora_b,
                       o.down_lora_a,
                       o.down_lora_b})
      mark(at, false);
    for (const LoraPiece& p : o.lora) mark(p.a, false), mark(p.b, false);
    for (int64_t at : {o.wq, o.wk, o.wv, o.wo, o.q_a, o.kv_a, o.kv_b, o.gate_up, o.down,
                       o.shared_gate_up, o.shared_down})
      mark(at, true);
  }
  std::vector<const ParamInfo*> params;
  for (const ParamInfo& p : layout.params()) params.push_back(&p);
  std::sort(params.begin(), params.end(),
            [](const ParamInfo* a, const ParamInfo* b) { return a->offset < b->offset; });
  SlabRanges out;
  bool matmul = false;
  for (const ParamInfo* p : params) {
    auto it = starts.find(p->offset);
    if (it != starts.end()) matmul = it->second;
    if (!matmul || !p->frozen) continue;
    XT_CHECK(!p->is_norm && !p->is_bias && !p->no_grad && !p->lora && p->shape.size() >= 2,
             "Bf16OnlyRanges: " + p->name + " taken for a matmul's weight");
    Append(out, p->offset, NumElements(p->shape));
  }
  return out;
}

SlabRanges Fp32Ranges(int64_t n, const SlabRanges& bf16_only) {
  SlabRanges out;
  int64_t at = 0;
  for (const auto& [begin, count] : bf16_only) {
    Append(out, at, std::min(begin, n) - at);
    at = std::max(at, begin + count);
  }
  Append(out, at, n - at);
  return out;
}

SlabRanges GranuleMappings(int64_t n, const SlabRanges& held, int64_t granularity) {
  const int64_t g = granularity, end = (n * 4 + g - 1) / g * g;
  SlabRanges out;
  for (const auto& [at, count] : held) {
    if (count <= 0) continue;
    const int64_t a = at * 4 / g * g, b = std::min(end, ((at + count) * 4 + g - 1) / g * g);
    Append(out, a, b - a);
  }
  return out;
}

int64_t MappedBytes(const SlabRanges& mappings) {
  int64_t bytes = 0;
  for (const auto& [at, n] : mappings) bytes += n;
  return bytes;
}

}  // namespace xt
