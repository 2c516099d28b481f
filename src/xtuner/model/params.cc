#include "xtuner/model/params.h"

namespace xt {

int64_t ParamLayout::Add(const std::string& name, Shape shape, bool is_norm) {
  int64_t offset = total_;
  index_[name] = params_.size();
  params_.push_back({name, shape, offset, is_norm});
  total_ += NumElements(shape);
  return offset;
}

const ParamInfo* ParamLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

ParamLayout::ParamLayout(const ModelConfig& c) {
  const int64_t H = c.hidden_size, D = c.head_dim;
  embed = Add("model.embed_tokens.weight", {c.vocab_size, H});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.ln1 = Add(p + "input_layernorm.weight", {H}, true);
    o.wq = Add(p + "self_attn.q_proj.weight", {c.num_heads * D, H});
    o.wk = Add(p + "self_attn.k_proj.weight", {c.num_kv_heads * D, H});
    o.wv = Add(p + "self_attn.v_proj.weight", {c.num_kv_heads * D, H});
    o.wo = Add(p + "self_attn.o_proj.weight", {H, c.num_heads * D});
    if (c.qk_norm) {
      o.q_norm = Add(p + "self_attn.q_norm.weight", {D}, true);
      o.k_norm = Add(p + "self_attn.k_norm.weight", {D}, true);
    }
    o.ln2 = Add(p + "post_attention_layernorm.weight", {H}, true);
    if (!c.layer_is_moe[l]) {
      const int64_t I = c.intermediate_size;
      o.gate_up = Add(p + "mlp.gate_proj.weight", {I, H});
      Add(p + "mlp.up_proj.weight", {I, H});
      o.down = Add(p + "mlp.down_proj.weight", {H, I});
    } else {
      const int64_t I = c.moe_intermediate_size, E = c.num_experts;
      const bool mixtral = c.arch == Arch::kMixtral;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      o.router = Add(moe + "gate.weight", {E, H});
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = moe + "experts." + std::to_string(e) + ".";
        int64_t off = Add(x + (mixtral ? "w1.weight" : "gate_proj.weight"), {I, H});
        Add(x + (mixtral ? "w3.weight" : "up_proj.weight"), {I, H});
        if (e == 0) o.gate_up = off;
      }
      for (int64_t e = 0; e < E; ++e) {
        const std::string x = moe + "experts." + std::to_string(e) + ".";
        int64_t off = Add(x + (mixtral ? "w2.weight" : "down_proj.weight"), {H, I});
        if (e == 0) o.down = off;
      }
    }
    layers.push_back(o);
  }
  final_norm = Add("model.norm.weight", {H}, true);
  lm_head = c.tie_word_embeddings ? embed : Add("lm_head.weight", {c.vocab_size, H});
}

}  // namespace xt
