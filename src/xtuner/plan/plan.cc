#include "xtuner/plan/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <vector>

#include "xtuner/dist/mesh.h"
#include "xtuner/dist/sharded_params.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/lora.h"
#include "xtuner/model/params.h"
#include "xtuner/plan/cuda_step.h"
#include "xtuner/plan/frozen_bf16.h"
#include "xtuner/train/metrics_flops.h"

namespace xt {

namespace {

std::string Str(int64_t v) { return std::to_string(v); }

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Element sizes of the CPU engine's buffers: fp32 at either precision (bf16 rounds the matmuls'
// inputs in scratch).
struct Sizes {
  int64_t act = 4;  // activations, activation gradients, gathered weights
  int64_t f32 = 4;  // norm statistics, router, log-sum-exp, loss, gradients, state
  int64_t i32 = 4;  // routing indices
};

// One decoder layer's activations kept for the backward: the buffers of
// Transformer::LayerActs (model/transformer_acts.h) for T tokens; routing balanced: a rank's
// experts receive as many rows as it sends (R = A = T*k).
int64_t LayerFullBytes(const ModelConfig& c, int64_t T, bool moe, const Sizes& s) {
  const int64_t H = c.hidden_size, D = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
  int64_t act = 4 * T * H;       // x_in, h1, x_mid, h2 (T, H)
  int64_t f32 = 2 * T + T * Hq;  // rstd1, rstd2 (T); lse (T, Hq)
  if (c.mla) {  // q, k, v (T, Hq, D; v zero-padded); attn (T, Hq*Dv); q_a's, c_kv's (and normed)
    act += 3 * T * Hq * D + T * Hq * c.v_head_dim + 2 * T * c.q_lora_rank + 2 * T * c.kv_lora_rank;
    f32 += (c.q_lora_rank > 0 ? T : 0) + T;  // qa_rstd, kv_rstd
  } else {
    act += 2 * T * Hq * D + 2 * T * Hkv * D;  // q, attn (T, Hq*D); k, v (T, Hkv*D)
  }
  if (c.qk_norm) {
    act += T * Hq * D + T * Hkv * D;  // q_pre, k_pre
    f32 += T * Hq + T * Hkv;          // q_rstd, k_rstd
  }
  int64_t i32 = 0;
  if (!moe) {
    act += 3 * T * c.intermediate_size;  // gu (T, 2I), act (T, I)
  } else {
    const int64_t E = c.num_experts, k = c.top_k, I = c.moe_intermediate_size, A = T * k;
    f32 += 2 * T * E + T * k;        // router_logits, probs (T, E); topk_w (T, k)
    i32 += T * k + (E + 1) + 2 * A;  // topk_idx, offsets (global experts), sorted, slot_of
    // xs (or, under expert parallelism, the R = A received rows xr), ys (A, H); gu (R, 2I),
    // act (R, I).
    act += 2 * A * H + 3 * A * I;
    act += 3 * T * c.n_shared_experts * I;  // shared_gu (T, 2Is), shared_act (T, Is)
  }
  return act * s.act + f32 * s.f32 + i32 * s.i32;
}

// The LoRA adapters' scratch (model/linear.cc's LinearBackward) of the layer whose offsets are
// `o`, among those of the weights `mlp` says (the dense MLP's, or attention's): z and dz (T, r)
// and dy (T, rows) of the largest adapter, and under dropout its masked input and input gradient
// (T, in); fp32 in either precision. The routed experts' adapters (model/transformer_moe.cc)
// take z and dz (A, r), dy (A, out) and dz A (A, in) over the A = T * top_k rows.
int64_t LoraScratchBytes(const ModelConfig& c, const LayerOffsets& o, bool mlp, int64_t T,
                         const Sizes& s) {
  int64_t most = 0;
  const int64_t r = c.lora.rank;
  for (const LoraPiece& p : o.lora)
    if ((p.base == o.gate_up || p.base == o.down) == mlp)
      most = std::max(most, 2 * T * r + T * p.rows + (c.lora.dropout > 0 ? 2 * T * p.in : 0));
  const int64_t A = T * c.top_k, H = c.hidden_size, I = c.moe_intermediate_size;
  if (mlp && o.gate_up_lora_a >= 0) most = std::max(most, 2 * A * r + A * 2 * I + A * H);
  if (mlp && o.down_lora_a >= 0) most = std::max(most, 2 * A * r + A * H + A * I);
  return most * s.f32;
}

// The activation gradients one LayerBackward allocates at its peak: dh2 plus the larger of the
// feed-forward block's and the attention block's temporaries (these with their LoRA adapters'
// scratch; `o`: the layer's offsets in ParamLayout(c)).
int64_t LayerScratchBytes(const ModelConfig& c, int64_t T, bool moe, const LayerOffsets& o,
                          const Sizes& s) {
  const int64_t H = c.hidden_size, D = c.head_dim, Hq = c.num_heads, Hkv = c.num_kv_heads;
  int64_t ffn = 0;
  if (!moe) {
    ffn = 3 * T * c.intermediate_size * s.act;  // dact (T, I), dgu (T, 2I)
  } else {
    const int64_t E = c.num_experts, k = c.top_k, I = c.moe_intermediate_size, A = T * k;
    ffn = (2 * A * H + 3 * A * I) * s.act           // dys, dxs (A, H); dact (A, I), dgu (A, 2I)
          + (T * k + 2 * T * E) * s.f32;            // dtopk_w (T, k); dprobs, dlogits (T, E)
    ffn += 3 * T * c.n_shared_experts * I * s.act;  // shared experts: dact (T, Is), dgu (T, 2Is)
  }
  int64_t attn = 2 * T * Hq * D + 2 * T * Hkv * D + T * H;  // dattn, dq, dk, dv, dh1
  if (c.qk_norm) attn += T * Hq * D + T * Hkv * D;          // dq_pre, dk_pre
  if (c.mla)  // dattn, dh1; the padded dout, out, dq, dk, dv (T, Hq, D); dkvb; dckv
    attn = T * Hq * c.v_head_dim + T * H + 5 * T * Hq * D +
           T * Hq * (c.qk_nope_head_dim + c.v_head_dim) + T * (c.kv_lora_rank + c.qk_rope_head_dim);
  return T * H * s.act + std::max(ffn + LoraScratchBytes(c, o, true, T, s),
                                  attn * s.act + LoraScratchBytes(c, o, false, T, s));
}

// The engine's LossInfo::activation_bytes: the backward walks down the layers; at layer l the
// layers below hold what they kept (x_in alone when recomputed) and l holds all of its buffers.
int64_t PeakActivations(const ModelConfig& c, int64_t T, int64_t recompute_layers, const Sizes& s) {
  int64_t peak = 0, below = 0;
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const int64_t full = LayerFullBytes(c, T, c.layer_is_moe[l], s);
    peak = std::max(peak, below + full);
    below += l < recompute_layers ? T * c.hidden_size * s.act : full;
  }
  return peak;
}

Status CheckInputs(const PlanInputs& in) {
  const ModelConfig& c = in.model;
  if (in.seq <= 0) return Status::Error("plan: --seq must be positive, got " + Str(in.seq));
  if (in.micro_batch_size <= 0)
    return Status::Error("plan: --micro-batch-size must be positive, got " +
                         Str(in.micro_batch_size));
  if (in.world <= 0) return Status::Error("plan: --world must be positive, got " + Str(in.world));
  if (in.ep <= 0) return Status::Error("plan: --ep must be positive, got " + Str(in.ep));
  if (in.world % in.ep != 0)
    return Status::Error("plan: --world " + Str(in.world) + " is not divisible by --ep " +
                         Str(in.ep) + " (world = dp x ep)");
  if (in.ep > 1 && !c.is_moe())
    return Status::Error("plan: --ep " + Str(in.ep) + " needs an MoE model; " + in.model_name +
                         " is dense (" + c.model_type + "): use --ep 1");
  if (c.is_moe() && c.num_experts % in.ep != 0)
    return Status::Error("plan: the model's " + Str(c.num_experts) +
                         " experts are not divisible by --ep " + Str(in.ep));
  if (!(in.recompute >= 0 && in.recompute <= 1))
    return Status::Error("plan: --recompute must be a fraction of the layers in [0, 1], got " +
                         std::to_string(in.recompute));
  if (!std::isfinite(in.gpu_memory_gib) || in.gpu_memory_gib < 0)
    return Status::Error("plan: --gpu-memory must be a non-negative number of GiB, got " +
                         std::to_string(in.gpu_memory_gib));
  if (c.num_layers <= 0 || int64_t(c.layer_is_moe.size()) != c.num_layers)
    return Status::Error("plan: " + in.model_name + ": the model config has no layers");
  return Status::OK();
}

// The least model.recompute / --recompute fraction in hundredths that recomputes at least k of L
// layers (Transformer::SetRecompute recomputes llround(fraction x L)); 1 at most.
double RecomputeFor(int64_t k, int64_t L) {
  int64_t c = std::max<int64_t>(0, int64_t(std::floor(100.0 * (double(k) - 0.5) / double(L))) - 1);
  while (c < 100 && std::llround(double(c) / 100.0 * double(L)) < k) ++c;
  return double(c) / 100.0;
}

// The least recompute above in.recompute whose plan `fits`: its fraction and its plan, or none.
struct RecomputeFit {
  double fraction = 0;
  PlanReport plan;
};
Result<std::optional<RecomputeFit>> LeastRecomputeThatFits(
    const PlanInputs& in, const PlanReport& r, const std::function<bool(const PlanReport&)>& fits) {
  for (int64_t k = r.recompute_layers + 1; k <= r.num_layers; ++k) {
    PlanInputs more = in;
    more.recompute = RecomputeFor(k, r.num_layers);
    more.gpu_memory_gib = 0;  // no verdict, so no search of its own
    XT_ASSIGN_OR_RETURN(PlanReport m, Plan(more));
    if (fits(m)) return std::optional<RecomputeFit>(RecomputeFit{more.recompute, std::move(m)});
  }
  return std::optional<RecomputeFit>();
}

}  // namespace

Result<Precision> ParsePrecision(const std::string& name) {
  if (name == "fp32") return Precision::kFp32;
  if (name == "bf16") return Precision::kBf16;
  return Status::Error("plan: --precision must be fp32 or bf16, not \"" + name + "\"");
}

const char* PrecisionName(Precision p) { return p == Precision::kBf16 ? "bf16" : "fp32"; }

Result<Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return Device::kCpu;
  if (name == "cuda") return Device::kCuda;
  return Status::Error("plan: --device must be cpu or cuda, not \"" + name + "\"");
}

const char* DeviceName(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

Result<PlanReport> Plan(const PlanInputs& in) {
  XT_RETURN_IF_ERROR(CheckInputs(in));
  const ModelConfig& c = in.model;
  const Sizes s;
  const bool cuda = in.device == Device::kCuda;
  const bool bf16 = in.precision == Precision::kBf16;
  const ParamLayout layout(c);
  const int64_t L = c.num_layers, H = c.hidden_size, V = c.vocab_size;
  PlanReport r;
  r.num_layers = L;
  r.dp = in.world / in.ep;
  r.experts_per_rank = c.num_experts / in.ep;
  r.tokens = in.micro_batch_size * in.seq;
  r.recompute_layers = int64_t(std::llround(in.recompute * double(L)));  // as SetRecompute
  r.total_params = layout.total();
  const int64_t T = r.tokens;

  // ---- parameters: the units the engine shards and gathers, read off the slab's layout.
  const int64_t per_expert = c.params_per_expert();
  const int64_t embed = layout.layers[0].ln1 - layout.embed;  // (V, H)
  const int64_t head = layout.total() - layout.final_norm;    // norm (H) [+ lm_head (V, H)]
  auto shard = [&](int64_t n) { return CeilDiv(n, in.world); };
  r.local_params = shard(embed) + shard(head);
  int64_t largest = c.tie_word_embeddings ? head : std::max(embed, head);
  int64_t largest_layer = 0;
  // LoRA on the routed experts: layer l's experts' adapters (all E experts'), laid out right
  // before the experts' weights and sharded with them.
  auto expert_adapters = [&](int64_t l) {
    const LayerOffsets& o = layout.layers[l];
    const int64_t first = o.gate_up_lora_a >= 0 ? o.gate_up_lora_a : o.down_lora_a;
    return first >= 0 ? o.gate_up - first : int64_t(0);
  };
  int64_t local_expert_adapters = 0;
  for (int64_t l = 0; l < L; ++l) {
    const int64_t end = l + 1 < L ? layout.layers[l + 1].ln1 : layout.final_norm;
    const int64_t span = end - layout.layers[l].ln1;
    const int64_t experts = c.layer_is_moe[l] ? c.num_experts * per_expert : 0;
    const int64_t adapters = expert_adapters(l);
    const int64_t local_experts = experts / in.ep;    // E/ep experts, sharded over dp ranks
    const int64_t local_adapters = adapters / in.ep;  // and their adapters with them
    r.expert_params += experts + adapters;
    r.local_expert_params += CeilDiv(local_experts + local_adapters, r.dp);
    r.local_params +=
        shard(span - experts - adapters) + CeilDiv(local_experts + local_adapters, r.dp);
    const int64_t layer = span - experts - adapters + local_experts + local_adapters;
    largest = std::max(largest, layer);
    largest_layer = std::max(largest_layer, layer);
    local_expert_adapters += CeilDiv(local_adapters, r.dp);
  }
  r.active_params = ActiveParams(c, r.total_params);
  r.matmul_params = r.active_params - (c.tie_word_embeddings ? 0 : V * H);

  // ---- state: fp32 parameters, gradients and AdamW's two moments, owned once over the mesh.
  // With LoRA only the adapters' gradients and moments are kept (the host allocates the whole
  // gradient shard but commits the adapters' pages only; a GPU holds the adapters' alone); the
  // adapters are split over every rank, the routed experts' with their experts.
  r.trainable_params = r.total_params;
  r.local_trainable = r.local_params;
  if (c.lora.enabled()) {
    r.trainable_params = AdapterParams(layout);
    r.local_trainable =
        CeilDiv(r.trainable_params - ExpertAdapterParams(c), in.world) + local_expert_adapters;
  }
  r.weight_bytes = r.local_params * s.f32;
  if (cuda && HoldsFrozenInBf16Only(c, bf16, in.world, in.frozen_bf16_only)) {
    // (cuda/train_backend_cuda.cc) the fp32 parameters in whole granules of mapped memory; one
    // GPU: the rest in the bf16 copy counted below; several: rank 0's shard (its chunks are the
    // largest), the rest in bf16 in it.
    if (in.world == 1) {
      const SlabRanges bf16_only = Bf16OnlyRanges(layout);
      r.bf16_only_params = MappedBytes(bf16_only);
      r.weight_bytes = MappedBytes(
          GranuleMappings(layout.total(), Fp32Ranges(layout.total(), bf16_only), kGpuGranularity));
    } else {
      XT_ASSIGN_OR_RETURN(const Mesh mesh, MakeMesh(int(in.world), 0, int(in.ep), c));
      const ParamLayout work(c, mesh.first_expert(c), c.is_moe() ? mesh.experts_per_rank(c) : -1);
      int64_t n = 0;
      const SlabRanges held16 = ShardBf16Ranges(c, mesh, Bf16OnlyRanges(work), &n);
      r.bf16_only_params = MappedBytes(held16);
      r.weight_bytes = MappedBytes(GranuleMappings(n, Fp32Ranges(n, held16), kGpuGranularity)) +
                       2 * r.bf16_only_params;
    }
  }
  r.grad_bytes = r.local_trainable * s.f32;
  r.optimizer_bytes = 2 * r.local_trainable * s.f32;

  // ---- working buffers: the gathered unit and its gradients (fp32 on both engines).
  r.largest_unit = largest;
  // The engine holds, at most: in the head's forward and backward, its weights and gradients
  // (and with tied embeddings the embedding's too, whose gradient buffer then stays open down to
  // the embedding's backward); in a layer's backward, the layer's weights and gradients (plus
  // that open tied-embedding gradient); the embedding's gradients at the end.
  // A LoRA run's gradient buffers hold the adapters' only: none for the embedding and the head.
  if (in.world > 1) {
    int64_t layer_grads = largest_layer, head_grads = head, embed_grads = embed;
    if (c.lora.enabled()) {
      layer_grads = head_grads = embed_grads = 0;
      for (int64_t l = 0; l < L; ++l) {
        const int64_t experts = expert_adapters(l);  // a rank's: its experts' only
        layer_grads = std::max(layer_grads, layout.trainable(ParamLayout::LayerUnit(l)).size() -
                                                experts + experts / in.ep);
      }
    }
    const int64_t layer = largest_layer * s.act + layer_grads * s.f32;
    if (c.tie_word_embeddings) {
      r.working_bytes = std::max((head + embed) * s.act + (head_grads + embed_grads) * s.f32,
                                 layer + embed_grads * s.f32);
    } else {
      r.working_bytes =
          std::max({head * s.act + head_grads * s.f32, layer, embed_grads * s.f32, embed * s.act});
    }
  }
  if (cuda) {
    // bf16 copies of the weights that enter matmuls: on one GPU every such unit's, kept from
    // step to step (all but an untied input embedding, whose lookup reads fp32); over several,
    // the units in use (the head with a tied embedding, or the largest layer).
    if (bf16 && in.world == 1)
      r.copy_bytes = 2 * (layout.total() - (c.tie_word_embeddings ? 0 : embed));
    if (bf16 && in.world > 1)
      r.copy_bytes = 2 * std::max(c.tie_word_embeddings ? head + embed : head, largest_layer);
    r.workspace_bytes = int64_t(32) << 20;  // cuda/gemm.cu's kWorkspaceBytes
    CudaStepInputs step;
    step.model = c;
    step.tokens = T;
    step.bf16 = bf16;
    step.bf16_attention = in.bf16_attention;
    step.expert_parallel = in.ep > 1;
    auto plan_at = [&](int64_t recompute_layers) {
      step.recompute_layers = recompute_layers;
      return PlanCudaStep(step);
    };
    const CudaStepMemory m = plan_at(r.recompute_layers);
    r.activation_bytes = m.activation_bytes;
    r.activation_bytes_no_recompute = plan_at(0).activation_bytes;
    r.activation_bytes_all_recompute = plan_at(L).activation_bytes;
    r.loss_chunk_rows = m.loss_chunk_rows;
    r.loss_chunk_bytes = m.loss_bytes;
    r.step_peak_bytes = m.peak_bytes;
    r.step_peak_at = m.peak_at;
    r.step_peak_activation_bytes = m.peak_activation_bytes;
    r.total_bytes = r.weight_bytes + r.grad_bytes + r.optimizer_bytes + r.working_bytes +
                    r.copy_bytes + r.workspace_bytes + r.step_peak_bytes;
    r.host_bytes = r.local_params * s.f32 + r.optimizer_bytes;
  } else {
    // Expert parallelism: the rows in flight besides those the layer keeps (the experts'
    // outputs before they go back in the forward; the received output gradients and the
    // returned input gradients in the backward): 2 x (T*k, H).
    if (in.ep > 1 && c.num_moe_layers() > 0) r.all_to_all_bytes = 2 * T * c.top_k * H * s.act;

    // ---- activations.
    r.activation_bytes = PeakActivations(c, T, r.recompute_layers, s);
    r.activation_bytes_no_recompute = PeakActivations(c, T, 0, s);
    r.activation_bytes_all_recompute = PeakActivations(c, T, L, s);
    // x, y, x_final, h_final, dh, dx (T, H); rstd_final (T); RoPE cos, sin (T, D/2); the
    // batch's ids, positions, targets (T) and cu_seqlens.
    r.stream_bytes = 6 * T * H * s.act + (T + T * c.rope_dim()) * s.f32 +
                     (3 * T + in.micro_batch_size + 1) * s.i32;
    // The fused lm_head + cross-entropy over chunks of loss tokens (every token assumed to
    // carry a loss): hc, dhc (C, H), logits (C, V) in fp32, per-row losses (C) and the row
    // list (T), in the CPU's default chunk (loss/cross_entropy.h).
    r.loss_chunk_rows = std::min(DefaultLossChunkRows(V, /*gpu=*/false), T);
    const int64_t C = r.loss_chunk_rows;
    r.loss_chunk_bytes = (2 * C * H + C * V) * s.f32 + 8 * C + 8 * T;
    for (int64_t l = 0; l < L; ++l)
      r.backward_scratch_bytes =
          std::max(r.backward_scratch_bytes,
                   LayerScratchBytes(c, T, c.layer_is_moe[l], layout.layers[l], s));
    if (r.recompute_layers > 0) r.backward_scratch_bytes += T * H * s.act;  // the rerun's output

    // The loss chunk lives before the first layer's backward, the scratch during one: never
    // both.
    r.total_bytes = r.weight_bytes + r.grad_bytes + r.optimizer_bytes + r.working_bytes +
                    r.all_to_all_bytes + r.activation_bytes + r.stream_bytes +
                    std::max(r.loss_chunk_bytes, r.backward_scratch_bytes);
  }

  // ---- FLOPs (model FLOPs on the active parameters, one causal document of `seq` tokens).
  r.flops_per_token_6n = 6.0 * double(r.matmul_params);
  r.flops_per_token = TrainingFlopsPerToken(r.matmul_params, L, c.attention_flops_dim(), in.seq,
                                            true, c.num_sliding_layers(), c.sliding_window);

  if (in.gpu_memory_gib > 0) {
    r.has_verdict = true;
    r.gpu_bytes = int64_t(std::llround(in.gpu_memory_gib * double(int64_t(1) << 30)));
    r.fits = r.total_bytes <= r.gpu_bytes;
    // Where it does not fit: the least recompute that does, if any.
    if (!r.fits) {
      XT_ASSIGN_OR_RETURN(const std::optional<RecomputeFit> least,
                          LeastRecomputeThatFits(in, r, [&](const PlanReport& m) {
                            return m.total_bytes <= r.gpu_bytes;
                          }));
      if (least) {
        r.fits_with_recompute = least->fraction;
        r.fits_with_recompute_layers = least->plan.recompute_layers;
        r.fits_with_recompute_bytes = least->plan.total_bytes;
      }
    }
  }
  return r;
}

int64_t StepBytes(const PlanReport& r) {
  return r.total_bytes - r.weight_bytes - r.grad_bytes - r.optimizer_bytes - r.workspace_bytes;
}

Status CheckStepFits(const PlanInputs& in, int64_t free_bytes, std::string* summary) {
  XT_ASSIGN_OR_RETURN(const PlanReport r, Plan(in));
  const bool cuda = in.device == Device::kCuda;
  auto gib = [](int64_t bytes) {  // GiB, or MiB below one
    const bool mib = bytes < (int64_t(1) << 30);
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.1f %s", double(bytes) / double(int64_t(1) << (mib ? 20 : 30)),
                  mib ? "MiB" : "GiB");
    return std::string(buf);
  };
  const int64_t need = StepBytes(r);
  const std::string tokens = std::to_string(r.tokens) + " tokens (train.micro_batch_size " +
                             std::to_string(in.micro_batch_size) + " x data.max_length " +
                             std::to_string(in.seq) + ")";
  const std::string memory = cuda ? "free" : "available";
  if (need <= free_bytes) {
    // What the plan does not count (the allocator's fragmentation, NCCL's and the libraries'
    // buffers, routing imbalance) needs room too: the benchmark's margin, 5% and 1 GiB.
    const bool tight = need + need / 20 + (int64_t(1) << 30) > free_bytes;
    if (summary)
      *summary = "the largest micro-batch (" + std::to_string(r.tokens) + " tokens) needs about " +
                 gib(need) + " more (xtuner plan), " + gib(free_bytes) + " " + memory +
                 (tight ? " (tight: what the plan does not count may not fit; raise "
                          "model.recompute if a step runs out of memory)"
                        : "");
    return Status::OK();
  }
  std::string msg = std::string(cuda ? "train.device = \"cuda\"" : "host memory") +
                    ": a micro-batch of " + tokens + " needs about " + gib(need) +
                    " beside the model's state (xtuner plan" + (cuda ? " --device cuda" : "") +
                    (cuda ? "; its peak is in " + r.step_peak_at : std::string()) + "), but " +
                    gib(free_bytes) + " " + (cuda ? "are free" : "are available") +
                    (in.world > 1 ? " (the least of any rank's)" : "") + ": ";
  const std::string more_gpus = in.world == 1 ? std::string(", or shard the state over more ") +
                                                    (cuda ? "GPUs" : "machines") + " (mpirun)"
                                              : std::string(", or spread the model over more ") +
                                                    (cuda ? "GPUs" : "machines") +
                                                    " (more ranks, or a larger parallel.ep)";
  const int64_t L = r.num_layers;
  XT_ASSIGN_OR_RETURN(const std::optional<RecomputeFit> least,
                      LeastRecomputeThatFits(
                          in, r, [&](const PlanReport& m) { return StepBytes(m) <= free_bytes; }));
  if (least) {
    char f[16];
    std::snprintf(f, sizeof f, "%g", least->fraction);
    return Status::Error(msg + "set model.recompute = " + f + " (" +
                         std::to_string(least->plan.recompute_layers) + " of " + std::to_string(L) +
                         " layers; about " + gib(StepBytes(least->plan)) +
                         "), or shorten data.max_length or train.micro_batch_size" + more_gpus);
  }
  return Status::Error(
      msg +
      (r.recompute_layers < L
           ? "even with every layer recomputed " + std::string("(model.recompute = 1) ")
           : std::string()) +
      "it does not fit: shorten data.max_length or train.micro_batch_size" + more_gpus);
}

// ---- formatting

namespace {

std::string Fmt(const char* fmt, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, fmt, v);
  return buf;
}

std::string Gib(int64_t bytes) { return Fmt("%.2f", double(bytes) / double(int64_t(1) << 30)); }

// A binary unit that suits `bytes`: GiB from 1 GiB up, else MiB, else KiB.
struct Unit {
  const char* name;
  double size;
};
Unit UnitFor(int64_t bytes) {
  if (bytes >= int64_t(1) << 30) return {"GiB", double(int64_t(1) << 30)};
  if (bytes >= int64_t(1) << 20) return {"MiB", double(int64_t(1) << 20)};
  return {"KiB", 1024.0};
}

// 2.308e10 -> "23.08 GFLOP".
std::string Flops(double f) {
  if (f >= 1e15) return Fmt("%.2f PFLOP", f / 1e15);
  if (f >= 1e12) return Fmt("%.2f TFLOP", f / 1e12);
  if (f >= 1e9) return Fmt("%.2f GFLOP", f / 1e9);
  if (f >= 1e6) return Fmt("%.2f MFLOP", f / 1e6);
  return Fmt("%.0f FLOP", f);
}

// 30532122624 -> "30.53B", 192937984 -> "192.94M", 2048 -> "2048".
std::string Count(int64_t n) {
  if (n >= 1000000000) return Fmt("%.2fB", double(n) / 1e9);
  if (n >= 1000000) return Fmt("%.2fM", double(n) / 1e6);
  return Str(n);
}

std::string Pad(std::string s, size_t width, bool right = false) {
  if (s.size() < width)
    s = right ? std::string(width - s.size(), ' ') + s : s + std::string(width - s.size(), ' ');
  return s;
}

// "examples/configs/qwen3-30b-a3b.json" -> "qwen3-30b-a3b"; "models/Qwen3-8B/" -> "Qwen3-8B".
std::string ShortName(const std::string& name) {
  std::filesystem::path p = std::filesystem::path(name).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  if (p.filename() == "config.json") p = p.parent_path();
  if (p.filename().empty()) return name;
  return p.extension() == ".json" ? p.stem().string() : p.filename().string();
}

std::string Verdict(const PlanReport& r) {
  if (!r.has_verdict) return "no verdict (pass --gpu-memory GiB)";
  const Unit u = UnitFor(std::min(r.total_bytes, r.gpu_bytes));
  auto size = [&](int64_t bytes) { return Fmt("%.2f ", double(bytes) / u.size) + u.name; };
  if (r.fits)
    return "fits in " + size(r.gpu_bytes) + " per rank (" + size(r.gpu_bytes - r.total_bytes) +
           " left)";
  std::string v = "does not fit (needs " + size(r.total_bytes) + ", has " + size(r.gpu_bytes) + ")";
  if (r.fits_with_recompute > 0)
    v += "; with --recompute " + Fmt("%g", r.fits_with_recompute) + " (" +
         Str(r.fits_with_recompute_layers) + " of " + Str(r.num_layers) + " layers) it fits in " +
         size(r.fits_with_recompute_bytes);
  else if (r.recompute_layers < r.num_layers)
    v += ", not even with every layer recomputed";
  return v;
}

}  // namespace

std::string FormatPlan(const PlanInputs& in, const PlanReport& r) {
  const ModelConfig& c = in.model;
  const bool bf16 = in.precision == Precision::kBf16;
  const bool cuda = in.device == Device::kCuda;
  const bool bf16_attention = PlansBf16Attention(c, bf16, in.bf16_attention);
  std::string o = "xtuner plan: " + in.model_name + "\n  model        " + c.model_type + ", " +
                  Str(c.num_layers) + " layers, hidden " + Str(c.hidden_size);
  if (c.is_moe())
    o += ", " + Str(c.num_experts) + " experts, top-" + Str(c.top_k) + ", " +
         Str(c.num_moe_layers()) + " MoE layers";
  o += "\n  mesh         world " + Str(in.world) + " = dp " + Str(r.dp) + " x ep " + Str(in.ep);
  if (c.is_moe()) o += ", " + Str(r.experts_per_rank) + " experts per rank";
  o += "\n  micro-batch  " + Str(in.micro_batch_size) + " x " + Str(in.seq) + " = " +
       Str(r.tokens) + " tokens per rank; recompute " + Str(r.recompute_layers) + " of " +
       Str(r.num_layers) + " layers\n";
  o += std::string("  engine       ") + DeviceName(in.device) + ", " + PrecisionName(in.precision);
  if (!cuda)
    o += bf16 ? ": bf16 rounds the matmuls' inputs in scratch; every buffer fp32\n"
              : ": every buffer fp32\n";
  else if (!bf16)
    o += ": every buffer fp32\n";
  else
    o +=
        std::string(bf16_attention
                        ? ": bf16 matmuls, attention and loss on the tensor cores; bf16 copies of\n"
                          "               the weights; activations fp32 but the q/k/v input, "
                          "attention's\n               q, k, v and output, "
                        : ": bf16 matmuls and loss on the tensor cores, attention on the fp32\n"
                          "               kernels; bf16 copies of the weights; activations fp32 "
                          "but the\n               q/k/v input, ") +
        (PlansRows16(c, bf16, in.ep > 1) ? "a dense MLP's input, SwiGLU's input and output,\n"
                                           "               and the experts' rows and outputs\n"
                                         : "a dense MLP's input and SwiGLU's input and output\n"
                                           "               (the experts' rows fp32)\n");

  o += "\nparameters                 total    per rank\n";
  auto prow = [&](const std::string& name, int64_t total, const std::string& local) {
    o += "  " + Pad(name, 20) + Pad(Count(total), 10, true) +
         (local.empty() ? "" : Pad(local, 12, true)) + "\n";
  };
  prow("all", r.total_params, Count(r.local_params));
  if (c.is_moe()) prow("routed experts", r.expert_params, Count(r.local_expert_params));
  prow("non-expert", r.total_params - r.expert_params,
       Count(r.local_params - r.local_expert_params));
  prow("active per token", r.active_params, "");
  if (c.lora.enabled()) prow("LoRA adapters (train)", r.trainable_params, Count(r.local_trainable));

  const Unit u = UnitFor(r.total_bytes);
  const std::string un = std::string(" ") + u.name;
  auto size = [&](int64_t bytes) { return Fmt("%.2f", double(bytes) / u.size); };
  o += "\nmemory per rank                                           " + std::string(u.name) + "\n";
  auto mrow = [&](const std::string& name, int64_t bytes) {
    o += "  " + Pad(name, 50) + Pad(size(bytes), 10, true) + "\n";
  };
  mrow(r.bf16_only_params > 0 ? "weights (fp32; frozen matmul ones: bf16 only)"
                              : "weights (fp32 master, sharded)",
       r.weight_bytes);
  mrow(c.lora.enabled() ? "gradients (fp32, sharded: the adapters')" : "gradients (fp32, sharded)",
       r.grad_bytes);
  mrow(c.lora.enabled() ? "AdamW moments (fp32 m and v: the adapters')"
                        : "AdamW moments (fp32 m and v, sharded)",
       r.optimizer_bytes);

  if (in.world > 1)
    mrow("gathered unit (" + Count(r.largest_unit) + "): fp32 weights + " +
             (c.lora.enabled() ? "LoRA grads" : "grads") +
             (c.tie_word_embeddings ? ", tied embedding's" : ""),
         r.working_bytes);
  if (cuda) {
    if (bf16)
      mrow(in.world == 1 ? "bf16 copy of the weights (kept between steps)"
                         : "bf16 copy of the units in use",
           r.copy_bytes);
    mrow("activations at the step's peak, recompute " + Str(r.recompute_layers) + "/" +
             Str(r.num_layers),
         r.step_peak_activation_bytes);
    mrow("other buffers at the step's peak", r.step_peak_bytes - r.step_peak_activation_bytes);
    mrow("cuBLASLt workspace", r.workspace_bytes);
    mrow("total", r.total_bytes);
    o += "\n  the step peaks in " + r.step_peak_at + "\n";
    o += "  activations kept for the backward (LossInfo::activation_bytes: the layers kept and\n"
         "  one recomputed layer): " +
         size(r.activation_bytes) + un + "; with recompute 0/" + Str(r.num_layers) + ": " +
         size(r.activation_bytes_no_recompute) + un + ", " + Str(r.num_layers) + "/" +
         Str(r.num_layers) + ": " + size(r.activation_bytes_all_recompute) + un + "\n";
    o += "  loss chunk (" + Str(r.loss_chunk_rows) + " x " + Str(c.vocab_size) + " fp32 logits" +
         (bf16 ? ", groups of 4 in bf16" : "") + "): " + size(r.loss_chunk_bytes) + un +
         ", inside the step's buffers\n";
  } else {
    if (c.is_moe() && in.ep > 1)
      mrow("expert all-to-all send + receive (2 x T*k*H)", r.all_to_all_bytes);
    mrow("activations, recompute " + Str(r.recompute_layers) + "/" + Str(r.num_layers),
         r.activation_bytes);
    mrow("residual stream, final norm, RoPE, batch", r.stream_bytes);
    const bool loss_larger = r.loss_chunk_bytes >= r.backward_scratch_bytes;
    const std::string loss =
        "loss chunk (" + Str(r.loss_chunk_rows) + " x " + Str(c.vocab_size) + " fp32 logits)";
    const std::string scratch = "one layer's backward scratch";
    mrow(loss_larger ? loss : scratch, std::max(r.loss_chunk_bytes, r.backward_scratch_bytes));
    mrow("total", r.total_bytes);
    o += "\n  activations kept for the backward with recompute 0/" + Str(r.num_layers) + ": " +
         size(r.activation_bytes_no_recompute) + un + ", " + Str(r.num_layers) + "/" +
         Str(r.num_layers) + ": " + size(r.activation_bytes_all_recompute) + un + "\n";
    o += "  " + (loss_larger ? scratch : loss) + ": " +
         size(std::min(r.loss_chunk_bytes, r.backward_scratch_bytes)) + un +
         " (never live with the " + (loss_larger ? "loss chunk" : "scratch") + ")\n";
  }
  if (cuda)
    o += "  host memory per rank: " + size(r.host_bytes) + un +
         " (the fp32 parameters it uploads and syncs back, AdamW's moments)\n";
  o += std::string("  not counted: ") + (cuda ? "CUDA context, allocator fragmentation, " : "") +
       (in.world > 1 ? "NCCL buffers, " : "") + "routing imbalance\n";

  o += "\nmodel FLOPs per token      " + Flops(r.flops_per_token) +
       ": 6N = " + Flops(r.flops_per_token_6n) + " over " + Count(r.matmul_params) +
       " active matmul parameters\n                           + causal attention over " +
       Str(in.seq) + " tokens\n";
  o += "per rank per micro-batch   " + Flops(r.flops_per_token * double(r.tokens)) +
       " (recompute adds about 2N FLOPs per token of hardware work)\n";
  o += "\nverdict: " + Verdict(r) + "\n";
  return o;
}

std::string FormatPlanRowHeader() {
  return "| model | world | ep | seq | recompute | engine | state GiB | buffers GiB | "
         "activations GiB | total GiB | verdict |\n"
         "|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|\n";
}

std::string FormatPlanRow(const PlanInputs& in, const PlanReport& r) {
  const int64_t state = r.weight_bytes + r.grad_bytes + r.optimizer_bytes;
  // The GPU's activations as live at its step's peak (a recomputed layer's are not, there).
  const int64_t activations =
      in.device == Device::kCuda ? r.step_peak_activation_bytes : r.activation_bytes;
  const int64_t buffers = r.total_bytes - state - activations;
  std::string verdict = "-";
  if (r.has_verdict)
    verdict = r.fits ? "fits (" + Gib(r.gpu_bytes - r.total_bytes) + " free)"
              : r.fits_with_recompute > 0
                  ? "does not fit; fits with --recompute " + Fmt("%g", r.fits_with_recompute)
                  : "does not fit";
  return "| " + ShortName(in.model_name) + " | " + Str(in.world) + " | " + Str(in.ep) + " | " +
         Str(in.seq) + " | " + Str(r.recompute_layers) + "/" + Str(r.num_layers) + " | " +
         DeviceName(in.device) + " " + PrecisionName(in.precision) + " | " + Gib(state) + " | " +
         Gib(buffers) + " | " + Gib(activations) + " | " + Gib(r.total_bytes) + " | " + verdict +
         " |\n";
}

}  // namespace xt
