// The parameter layout: every weight of a model lives in one fp32 slab (and its gradient in a
// second slab of the same layout). Each Hugging Face tensor maps to one contiguous range of the
// slab, so loading and saving are copies, and the layout suits the kernels:
//   - an MLP's gate_proj (I, H) and up_proj (I, H) are adjacent: one fused (2I, H) matrix
//   [gate|up];
//   - an MoE layer's experts are stacked: gate_up (E, 2I, H) and down (E, H, I), expert e's
//     gate_proj, up_proj and down_proj being slices of those.
// Every decoder layer is one contiguous range (its experts last), and so are the embedding and
// the head (final norm + lm_head): these are the units that ZeRO-3 gathers one at a time.
// Under expert parallelism a rank's layout holds only its slice of each MoE layer's experts
// (named by their global index), so its offsets differ from the whole model's.
// GPT-OSS's checkpoints hold each layer's experts as four stacked tensors (experts.gate_up_proj
// [E, H, 2I] with gate and up interleaved, ...); here they are per expert, as for the other
// models, under names of their own (model/gpt_oss_experts.h maps between the two).
// With LoRA (ModelConfig::lora) each layer also holds its adapters, after its other weights and
// before its experts, named as PEFT saves them without its "base_model.model." prefix
// ("model.layers.0.self_attn.q_proj.lora_A.weight"); they are the only parameters that train.
// The routed experts' adapters follow them, one per expert under names of their own
// ("model.layers.1.mlp.experts.3.gate_up_proj.lora_A.weight"; PEFT stacks them over the
// experts: model/lora.h maps between the two).
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "xtuner/core/tensor.h"
#include "xtuner/model/config.h"

namespace xt {

struct ParamInfo {
  std::string name;  // the Hugging Face tensor name
  Shape shape;
  int64_t offset = 0;    // in floats, into the slab
  bool is_norm = false;  // a norm weight (no weight decay by default)
  bool is_bias = false;  // a bias (zero at init, no weight decay by default)
  // A buffer the training loop moves by a rule, not by its gradient (DeepSeek-V3's
  // e_score_correction_bias): zero at init, never decayed, its gradient always zero.
  bool no_grad = false;
  bool lora = false;    // a LoRA adapter's A or B
  bool frozen = false;  // with LoRA: every parameter but the adapters (no gradient, no update)
};

// A LoRA adapter of a linear layer: A (rank, in) at offset a, B (rows, rank) at offset b, adding
// to output rows [row0, row0 + rows) of the weight at offset `base` (a dense MLP's gate_proj and
// up_proj are the two halves of its one fused gate_up weight). id: its place among the model's
// adapters in slab order, the same in every rank's layout (its dropout mask's salt).
struct LoraPiece {
  int64_t base = -1, row0 = 0, rows = 0, in = 0, a = -1, b = -1, id = 0;
};

// Offsets (in floats) of one decoder layer's weights; -1 where the layer has no such weight.
struct LayerOffsets {
  int64_t ln1 = -1, wq = -1, wk = -1, wv = -1, wo = -1, q_norm = -1, k_norm = -1, ln2 = -1;
  int64_t gate_up = -1, down = -1;  // dense: (2I, H), (H, I); MoE: (E, 2I, H), (E, H, I)
  int64_t router = -1;              // MoE: (E, H)
  // DeepSeek-V3. MLA: wq is q_b_proj (Hq*D, q_lora_rank) after q_a (q_lora_rank, H) and its norm,
  // or q_proj (Hq*D, H) without them; kv_a (kv_lora_rank + rope, H), kv_a_norm (kv_lora_rank),
  // kv_b (Hq*(nope + v), kv_lora_rank); wo (H, Hq*v). MoE: router_bias (E), the shared experts'
  // gate_up (2*Is, H) and down (H, Is).
  int64_t q_a = -1, q_a_norm = -1, kv_a = -1, kv_a_norm = -1, kv_b = -1;
  int64_t router_bias = -1, shared_gate_up = -1, shared_down = -1;
  // GPT-OSS: the biases of q/k/v/o_proj, the attention sinks (Hq), the router's logit bias (E),
  // and the experts' biases (E, 2I) [gate | up] and (E, H).
  int64_t bq = -1, bk = -1, bv = -1, bo = -1, sinks = -1, router_logit_bias = -1;
  int64_t gate_up_bias = -1, down_bias = -1;
  std::vector<LoraPiece> lora;  // the layer's LoRA adapters, in slab order (empty without LoRA)
  // LoRA on the routed experts (LoraSpec::expert_targets): the adapters of this layout's
  // experts' gate_up and down weights, stacked over the experts as the weights are: A (E, r, in)
  // and B (E, out, r), expert e's A_e (r, in) and B_e (out, r) adding scale * B_e A_e to its
  // weight; -1 where not adapted.
  int64_t gate_up_lora_a = -1, gate_up_lora_b = -1, down_lora_a = -1, down_lora_b = -1;
};

// The name ParamLayout gives expert e's adapter of layer l's routed experts' `param`
// ("gate_up_proj" or "down_proj"), `kind` "lora_A" or "lora_B":
// "model.layers.1.mlp.experts.3.gate_up_proj.lora_A.weight" (Mixtral: block_sparse_moe).
std::string ExpertAdapterName(const ModelConfig& cfg, int64_t l, int64_t e,
                              const std::string& param, const std::string& kind);

// A contiguous range [begin, end) of the slab, in floats.
struct ParamUnit {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};

class ParamLayout {
 public:
  // The whole model, or only experts [expert_begin, expert_begin + expert_count) of each MoE
  // layer (expert_count -1: all).
  explicit ParamLayout(const ModelConfig& cfg, int64_t expert_begin = 0, int64_t expert_count = -1);

  int64_t total() const { return total_; }
  const std::vector<ParamInfo>& params() const { return params_; }
  // The entry for a hub name, or null.
  const ParamInfo* Find(const std::string& name) const;

  int64_t embed = -1, final_norm = -1, lm_head = -1;  // lm_head == embed when tied
  std::vector<LayerOffsets> layers;
  int64_t expert_begin = 0, expert_count = 0;  // the experts this layout holds (0, 0: dense)

  // The units, in slab order: 0 the embedding, 1 + l decoder layer l, L + 1 the head (final
  // norm, and lm_head unless tied). They cover [0, total()) exactly.
  const std::vector<ParamUnit>& units() const { return units_; }
  static int64_t LayerUnit(int64_t l) { return 1 + l; }
  int64_t head_unit() const { return int64_t(units_.size()) - 1; }
  // The part of unit u whose parameters train: the whole unit, or with LoRA its adapters (an
  // empty range in the embedding and head units).
  const ParamUnit& trainable(int64_t u) const { return trainable_[u]; }

 private:
  int64_t Add(const std::string& name, Shape shape, bool is_norm = false, bool no_grad = false);
  int64_t AddBias(const std::string& name, Shape shape);
  int64_t total_ = 0;
  bool lora_ = false;
  std::vector<ParamInfo> params_;
  std::unordered_map<std::string, size_t> index_;
  std::vector<ParamUnit> units_, trainable_;
};

}  // namespace xt
