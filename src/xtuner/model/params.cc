#include "xtuner/model/params.h"

#include "xtuner/core/status.h"

namespace xt {

std::string ExpertAdapterName(const ModelConfig& cfg, int64_t l, int64_t e,
                              const std::string& param, const std::string& kind) {
  return "model.layers." + std::to_string(l) +
         (cfg.arch == Arch::kMixtral ? ".block_sparse_moe" : ".mlp") + ".experts." +
         std::to_string(e) + "." + param + "." + kind + ".weight";
}

int64_t ParamLayout::Add(const std::string& name, Shape shape, bool is_norm, bool no_grad) {
  int64_t offset = total_;
  index_[name] = params_.size();
  params_.push_back({name, shape, offset, is_norm, false, no_grad, false, lora_});
  total_ += NumElements(shape);
  return offset;
}

int64_t ParamLayout::AddBias(const std::string& name, Shape shape) {
  const int64_t offset = Add(name, shape);
  params_.back().is_bias = true;
  return offset;
}

const ParamInfo* ParamLayout::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &params_[it->second];
}

ParamLayout::ParamLayout(const ModelConfig& c, int64_t first_expert, int64_t num_experts) {
  const int64_t H = c.hidden_size, D = c.head_dim;
  lora_ = c.lora.enabled();
  // The linear layers of the layer being laid out that LoRA adapts: (module, piece).
  std::vector<std::pair<std::string, LoraPiece>> adapted;
  int64_t adapter_ids = 0;  // adapters laid out so far
  // Weight `module`.weight (out, in) at `offset`; `row0`: its first row in a fused weight at
  // `base` (the gate_up weight), else itself.
  auto linear = [&](const std::string& module, int64_t out, int64_t in, int64_t offset,
                    int64_t base = -1, int64_t row0 = 0) {
    const size_t dot = module.rfind('.');
    if (!lora_ || !c.lora.Targets(module.substr(dot + 1))) return offset;
    LoraPiece piece;
    piece.base = base < 0 ? offset : base;
    piece.row0 = row0;
    piece.rows = out;
    piece.in = in;
    adapted.emplace_back(module, piece);
    return offset;
  };
  auto add_linear = [&](const std::string& module, int64_t out, int64_t in) {
    return linear(module, out, in, Add(module + ".weight", {out, in}));
  };
  // The same followed by its bias (out) at *bias when the model has attention biases.
  auto add_biased = [&](const std::string& module, int64_t out, int64_t in, int64_t* bias) {
    const int64_t w = add_linear(module, out, in);
    if (c.attention_bias) *bias = AddBias(module + ".bias", {out});
    return w;
  };
  // A SwiGLU MLP's gate_proj and up_proj (one fused (2I, H) weight) and down_proj.
  auto add_mlp = [&](const std::string& m, int64_t I, int64_t* gate_up, int64_t* down) {
    *gate_up = Add(m + "gate_proj.weight", {I, H});
    linear(m + "gate_proj", I, H, *gate_up, *gate_up, 0);
    linear(m + "up_proj", I, H, Add(m + "up_proj.weight", {I, H}), *gate_up, I);
    *down = add_linear(m + "down_proj", H, I);
  };
  // The adapters of the layer, after its other weights (they alone train): their range.
  auto add_adapters = [&](LayerOffsets* o) {
    const int64_t begin = total_;
    for (auto& [module, piece] : adapted) {
      const size_t i = params_.size();
      piece.a = Add(module + ".lora_A.weight", {c.lora.rank, piece.in});
      piece.b = Add(module + ".lora_B.weight", {piece.rows, c.lora.rank});
      piece.id = adapter_ids++;
      for (size_t j : {i, i + 1}) {
        params_[j].lora = true;
        params_[j].frozen = false;
      }
      o->lora.push_back(piece);
    }
    adapted.clear();
    return ParamUnit{begin, total_};
  };
  if (c.is_moe()) {
    expert_begin = first_expert;
    expert_count = num_experts < 0 ? c.num_experts - first_expert : num_experts;
    XT_CHECK(expert_begin >= 0 && expert_count >= 1 && expert_begin + expert_count <= c.num_experts,
             "ParamLayout: expert slice out of range");
  }
  embed = Add("model.embed_tokens.weight", {c.vocab_size, H});
  units_.push_back({0, total_});
  trainable_.push_back(lora_ ? ParamUnit{total_, total_} : units_.back());
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t unit_begin = total_;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerOffsets o;
    o.ln1 = Add(p + "input_layernorm.weight", {H}, true);
    if (c.mla) {
      const std::string a = p + "self_attn.";
      const int64_t Rq = c.q_lora_rank, Rkv = c.kv_lora_rank, Hq = c.num_heads;
      if (Rq > 0) {
        o.q_a = add_linear(a + "q_a_proj", Rq, H);
        o.q_a_norm = Add(a + "q_a_layernorm.weight", {Rq}, true);
        o.wq = add_linear(a + "q_b_proj", Hq * D, Rq);
      } else {
        o.wq = add_linear(a + "q_proj", Hq * D, H);
      }
      o.kv_a = add_linear(a + "kv_a_proj_with_mqa", Rkv + c.qk_rope_head_dim, H);
      o.kv_a_norm = Add(a + "kv_a_layernorm.weight", {Rkv}, true);
      o.kv_b = add_linear(a + "kv_b_proj", Hq * (c.qk_nope_head_dim + c.v_head_dim), Rkv);
      o.wo = add_linear(a + "o_proj", H, Hq * c.v_head_dim);
    } else {
      o.wq = add_biased(p + "self_attn.q_proj", c.num_heads * D, H, &o.bq);
      o.wk = add_biased(p + "self_attn.k_proj", c.num_kv_heads * D, H, &o.bk);
      o.wv = add_biased(p + "self_attn.v_proj", c.num_kv_heads * D, H, &o.bv);
      o.wo = add_biased(p + "self_attn.o_proj", H, c.num_heads * D, &o.bo);
      if (c.attention_sinks) o.sinks = Add(p + "self_attn.sinks", {c.num_heads});
    }
    if (c.qk_norm) {
      o.q_norm = Add(p + "self_attn.q_norm.weight", {D}, true);
      o.k_norm = Add(p + "self_attn.k_norm.weight", {D}, true);
    }
    o.ln2 = Add(p + "post_attention_layernorm.weight", {H}, true);
    ParamUnit adapters;
    if (!c.layer_is_moe[l]) {
      add_mlp(p + "mlp.", c.intermediate_size, &o.gate_up, &o.down);
      adapters = add_adapters(&o);
    } else {
      const int64_t I = c.moe_intermediate_size, E = c.num_experts;
      const int64_t e0 = expert_begin, e1 = expert_begin + expert_count;
      const bool mixtral = c.arch == Arch::kMixtral, gpt_oss = c.arch == Arch::kGptOss;
      const std::string moe = p + (mixtral ? "block_sparse_moe." : "mlp.");
      o.router = Add(moe + (gpt_oss ? "router.weight" : "gate.weight"), {E, H});
      if (c.router_logit_bias) o.router_logit_bias = AddBias(moe + "router.bias", {E});
      if (c.router == RouterKind::kSigmoidGroup)
        o.router_bias = Add(moe + "gate.e_score_correction_bias", {E}, false, /*no_grad=*/true);
      if (c.n_shared_experts > 0)  // shared experts: a dense SwiGLU MLP, before the experts
        add_mlp(moe + "shared_experts.", c.n_shared_experts * I, &o.shared_gate_up, &o.shared_down);
      adapters = add_adapters(&o);
      // The experts' adapters (LoraSpec::expert_targets), each kind stacked over the experts.
      auto add_expert_adapter = [&](const char* param, int64_t out, int64_t in, int64_t* a,
                                    int64_t* b) {
        if (!lora_ || !c.lora.TargetsExperts(l, param)) return;
        const int64_t r = c.lora.rank;
        for (const auto& [kind, rows, cols, at] :
             {std::tuple{"lora_A", r, in, a}, std::tuple{"lora_B", out, r, b}})
          for (int64_t e = e0; e < e1; ++e) {
            const int64_t off = Add(ExpertAdapterName(c, l, e, param, kind), {rows, cols});
            params_.back().lora = true;
            params_.back().frozen = false;
            if (e == e0) *at = off;
          }
      };
      add_expert_adapter("gate_up_proj", 2 * I, H, &o.gate_up_lora_a, &o.gate_up_lora_b);
      add_expert_adapter("down_proj", H, I, &o.down_lora_a, &o.down_lora_b);
      adapters.end = total_;
      if (gpt_oss) {  // per expert under names of their own: model/gpt_oss_experts.h
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t off =
              Add(moe + "experts." + std::to_string(e) + ".gate_up_proj", {2 * I, H});
          if (e == e0) o.gate_up = off;
        }
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t off = Add(moe + "experts." + std::to_string(e) + ".down_proj", {H, I});
          if (e == e0) o.down = off;
        }
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t off =
              AddBias(moe + "experts." + std::to_string(e) + ".gate_up_proj_bias", {2 * I});
          if (e == e0) o.gate_up_bias = off;
        }
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t off =
              AddBias(moe + "experts." + std::to_string(e) + ".down_proj_bias", {H});
          if (e == e0) o.down_bias = off;
        }
      } else {
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
    }
    layers.push_back(std::move(o));
    units_.push_back({unit_begin, total_});
    trainable_.push_back(lora_ ? adapters : units_.back());
  }
  const int64_t head_begin = total_;
  final_norm = Add("model.norm.weight", {H}, true);
  lm_head = c.tie_word_embeddings ? embed : Add("lm_head.weight", {c.vocab_size, H});
  units_.push_back({head_begin, total_});
  trainable_.push_back(lora_ ? ParamUnit{total_, total_} : units_.back());
}

}  // namespace xt
