#include "xtuner/model/params.h"

#include "xtuner/core/status.h"

namespace xt {

int64_t ParamLayout::Add(const std::string& name, Shape shape, bool is_norm, bool no_grad) {
  int64_t offset = total_;
  index_[name] = params_.size();
  params_.push_back({name, shape, offset, is_norm, no_grad});
  total_ += NumElements(shape);
  return offset;
}

const ParamInfo* ParamLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

ParamLayout::ParamLayout(const ModelConfig& c, int64_t first_expert, int64_t num_experts) {
  const int64_t H = c.hidden_size, D = c.head_dim;
  if (c.is_moe()) {
    expert_begin = first_expert;
    expert_count = num_experts < 0 ? c.num_experts - first_expert : num_experts;
    XT_CHECK(expert_begin >= 0 && expert_count >= 1 && expert_begin + expert_count <= c.num_experts,
             "ParamLayout: expert slice out of range");
  }
  embed = Add("model.embed_tokens.weight", {c.vocab_size, H});
  units_.push_back({0, total_});
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t unit_begin = total_;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.ln1 = Add(p + "input_layernorm.weight", {H}, true);
    if (c.mla) {
      const std::string a = p + "self_attn.";
      const int64_t Rq = c.q_lora_rank, Rkv = c.kv_lora_rank, Hq = c.num_heads;
      if (Rq > 0) {
        o.q_a = Add(a + "q_a_proj.weight", {Rq, H});
        o.q_a_norm = Add(a + "q_a_layernorm.weight", {Rq}, true);
        o.wq = Add(a + "q_b_proj.weight", {Hq * D, Rq});
      } else {
        o.wq = Add(a + "q_proj.weight", {Hq * D, H});
      }
      o.kv_a = Add(a + "kv_a_proj_with_mqa.weight", {Rkv + c.qk_rope_head_dim, H});
      o.kv_a_norm = Add(a + "kv_a_layernorm.weight", {Rkv}, true);
      o.kv_b = Add(a + "kv_b_proj.weight", {Hq * (c.qk_nope_head_dim + c.v_head_dim), Rkv});
      o.wo = Add(a + "o_proj.weight", {H, Hq * c.v_head_dim});
    } else {
      o.wq = Add(p + "self_attn.q_proj.weight", {c.num_heads * D, H});
      o.wk = Add(p + "self_attn.k_proj.weight", {c.num_kv_heads * D, H});
      o.wv = Add(p + "self_attn.v_proj.weight", {c.num_kv_heads * D, H});
      o.wo = Add(p + "self_attn.o_proj.weight", {H, c.num_heads * D});
    }
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
      const int64_t e0 = expert_begin, e1 = expert_begin + expert_count;
      const bool mixtral = c.arch == Arch::kMixtral;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      o.router = Add(moe + "gate.weight", {E, H});
      if (c.router == RouterKind::kSigmoidGroup)
        o.router_bias = Add(moe + "gate.e_score_correction_bias", {E}, false, /*no_grad=*/true);
      if (c.n_shared_experts > 0) {  // shared experts: a dense SwiGLU MLP, before the experts
        const int64_t Is = c.n_shared_experts * I;
        o.shared_gate_up = Add(moe + "shared_experts.gate_proj.weight", {Is, H});
        Add(moe + "shared_experts.up_proj.weight", {Is, H});
        o.shared_down = Add(moe + "shared_experts.down_proj.weight", {H, Is});
      }
      for (int64_t e = e0; e < e1; ++e) {
        const std::string x = moe + "experts." + std::to_string(e) + ".";
        int64_t off = Add(x + (mixtral ? "w1.weight" : "gate_proj.weight"), {I, H});
        Add(x + (mixtral ? "w3.weight" : "up_proj.weight"), {I, H});
        if (e == e0) o.gate_up = off;
      }
      for (int64_t e = e0; e < e1; ++e) {
        const std::string x = moe + "experts." + std::to_string(e) + ".";
        int64_t off = Add(x + (mixtral ? "w2.weight" : "down_proj.weight"), {H, I});
        if (e == e0) o.down = off;
      }
    }
    layers.push_back(o);
    units_.push_back({unit_begin, total_});
  }
  const int64_t head_begin = total_;
  final_norm = Add("model.norm.weight", {H}, true);
  lm_head = c.tie_word_embeddings ? embed : Add("lm_head.weight", {c.vocab_size, H});
  units_.push_back({head_begin, total_});
}

}  // namespace xt
