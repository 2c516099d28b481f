#include "xtuner/plan/cuda_step.h"

#include <algorithm>
#include <optional>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/loss/cross_entropy.h"
#include "xtuner/model/params.h"

namespace xt {

namespace {

constexpr int64_t kF32 = 4, kBf16 = 2, kI32 = 4;

// An allocation's size in the pool: rounded up to 256 bytes, as the CUDA allocators (and the
// emulator) align them; never zero bytes.
int64_t Rounded(int64_t bytes) { return (std::max<int64_t>(bytes, 1) + 255) / 256 * 256; }

// The pool's live bytes and their high-water mark, with where it was reached and how much of it
// was activations (the layers' kept buffers and the residual stream's).
class Pool {
 public:
  void Alloc(int64_t rounded, bool kept) {
    live_ += rounded;
    if (kept) kept_ += rounded;
    if (live_ > high_) high_ = live_, high_kept_ = kept_, high_at_ = where_;
  }
  void Free(int64_t rounded, bool kept) {
    live_ -= rounded;
    if (kept) kept_ -= rounded;
  }
  // Buffers alive for one instant (a kernel's scratch): counted at their peak, then freed.
  void Transient(int64_t rounded) { Alloc(rounded, false), Free(rounded, false); }
  void At(std::string where) { where_ = std::move(where); }
  int64_t high() const { return high_; }
  int64_t high_kept() const { return high_kept_; }
  const std::string& high_at() const { return high_at_; }

 private:
  int64_t live_ = 0, kept_ = 0, high_ = 0, high_kept_ = 0;
  std::string where_, high_at_;
};

// A buffer in the pool, as a DeviceArray: Alloc frees what it held first; freed when it goes.
// kept: an activation (kept for the backward), else scratch.
class Buf {
 public:
  explicit Buf(Pool* pool, bool kept = false) : pool_(pool), kept_(kept) {}
  Buf(Buf&& o) noexcept : pool_(o.pool_), kept_(o.kept_), held_(o.held_), asked_(o.asked_) {
    o.held_ = o.asked_ = 0;
  }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { Free(); }
  void Alloc(int64_t bytes) {
    Free();
    held_ = Rounded(bytes);
    asked_ = bytes;
    pool_->Alloc(held_, kept_);
  }
  // DeviceArray::Reserve: a new buffer only when the one held is too small.
  void Reserve(int64_t bytes) {
    if (bytes > asked_) Alloc(bytes);
  }
  void Free() {
    pool_->Free(held_, kept_);
    held_ = asked_ = 0;
  }
  int64_t bytes() const { return held_; }   // in the pool (rounded)
  int64_t asked() const { return asked_; }  // as requested (DeviceArray::size() x its type)

 private:
  Pool* pool_;
  bool kept_;
  int64_t held_ = 0, asked_ = 0;
};

std::vector<Buf> Kept(Pool* pool, int n) {
  std::vector<Buf> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.emplace_back(pool, true);
  return v;
}

// One layer's buffers kept from its forward to its backward (CudaModel::Buffers::Layer).
struct Layer {
  explicit Layer(Pool* p)
      : attention(Kept(p, 18)),
        mla(Kept(p, 6)),
        router(Kept(p, 8)),
        shared(Kept(p, 2)),
        xs(p, true),
        ys(p, true),
        gu(p, true),
        act(p, true),
        xr(p, true),
        ys16(p, true),
        gu16(p, true) {}
  // rstd1, h1, q, k, v, q_pre, k_pre, q_rstd, k_rstd, attn, lse, x_mid, h2, rstd2, and with the
  // bf16 attention kernels q16, k16, v16, attn16 (in place of q, k, v, attn).
  std::vector<Buf> attention;
  // Multi-head latent attention: qa, qa_n, qa_rstd, kv_c, kv_n, kv_rstd (q, k, v, attn, lse as
  // above; v padded to the head dim, attn not).
  std::vector<Buf> mla;
  // router_logits, probs, topk_w, topk_idx, sorted, slot_of; expert parallelism's row maps.
  std::vector<Buf> router;
  std::vector<Buf> shared;  // the shared experts' SwiGLU input and output (fp32)
  // rows16 (PlansRows16: bf16 mode, an even hidden size under expert parallelism, not GPT-OSS's
  // experts): the experts' outputs and SwiGLU's input kept in bf16 for the backward (ys16, gu16;
  // a dense layer's gu16 in bf16 mode), the fp32 ones freed after the forward. xs and xr hold
  // the rows in bf16 or fp32 (rows_size), as xs16 / xr16 or xs / xr.
  Buf xs, ys, gu, act, xr, ys16, gu16;
  int64_t Bytes() const {
    int64_t n = xs.asked() + ys.asked() + gu.asked() + act.asked() + xr.asked() + ys16.asked() +
                gu16.asked();
    for (const std::vector<Buf>* v : {&attention, &mla, &router, &shared})
      for (const Buf& b : *v) n += b.asked();
    return n;
  }
  void Free() {
    for (std::vector<Buf>* v : {&attention, &mla, &router, &shared})
      for (Buf& b : *v) b.Free();
    for (Buf* b : {&xs, &ys, &gu, &act, &xr, &ys16, &gu16}) b->Free();
  }
};

}  // namespace

bool PlansBf16Attention(const ModelConfig& c, bool bf16, bool bf16_attention) {
  const int64_t D = c.head_dim;
  const bool extras = c.mla || c.attention_sinks || c.num_sliding_layers() > 0;
  return bf16 && bf16_attention && !extras && D % 16 == 0 && D >= 16 && D <= 128;
}

bool PlansRows16(const ModelConfig& c, bool bf16, bool expert_parallel) {
  const bool gpt_oss_experts = c.expert_bias || c.expert_act == ExpertActivation::kGptOssGlu;
  return bf16 && !gpt_oss_experts && (!expert_parallel || c.hidden_size % 2 == 0);
}

CudaStepMemory PlanCudaStep(const CudaStepInputs& in) {
  const ModelConfig& c = in.model;
  XT_CHECK(in.tokens > 0 && int64_t(c.layer_is_moe.size()) == c.num_layers,
           "PlanCudaStep: needs tokens and a loaded config");
  const int64_t T = in.tokens, H = c.hidden_size, V = c.vocab_size, L = c.num_layers;
  const int64_t D = c.head_dim, Hq = c.num_heads;
  const int64_t Hkv = c.mla ? Hq : c.num_kv_heads;  // MLA: a key and a value per query head
  const int64_t E = c.num_experts, k = c.top_k, A = T * k, R = A;
  const bool bf16 = in.bf16, ep = in.expert_parallel;
  const bool bf16_attention = PlansBf16Attention(c, bf16, in.bf16_attention);
  // The experts' rows held in bf16 (under expert parallelism they travel as float pairs).
  const bool rows16 = PlansRows16(c, bf16, ep);
  const int64_t act_size = bf16 ? kBf16 : kF32, rows_size = rows16 ? kBf16 : kF32;
  // The balancing loss's gradient: the softmax routers' only (DeepSeek-V3 balances by its bias).
  const bool aux_grad =
      c.num_moe_layers() > 0 && c.router == RouterKind::kSoftmax && c.router_aux_loss_coef != 0;
  // Multi-head latent attention's sizes (DeepSeek-V3), and the shared experts' width.
  const int64_t Rq = c.q_lora_rank, Rkv = c.kv_lora_rank, dn = c.qk_nope_head_dim;
  const int64_t dr = c.qk_rope_head_dim, dv = c.value_dim();
  const int64_t Is = c.n_shared_experts * c.moe_intermediate_size;

  Pool pool;
  CudaStepMemory out;
  Buf operand_a(&pool), operand_b(&pool);  // bf16 operands rounded right before their product
  auto round_a = [&](int64_t elements) {
    if (bf16) operand_a.Reserve(elements * kBf16);
  };
  auto round_b = [&](int64_t elements) {
    if (bf16) operand_b.Reserve(elements * kBf16);
  };
  // A LoRA run (cuda/lora_terms.h): the base weights are frozen, so their backward rounds no
  // input for a weight gradient (base_b); each adapter of the weight at layout offset w of the
  // layer whose offsets are o takes scratch while its product runs (forward: z (T, r) and y (T,
  // rows); backward: z, dz and dy (T, rows)), rounding z or dy, and in the backward the adapted
  // input again where it is not held in bf16 (`in` elements; 0: held). With LoRA's dropout the
  // adapter's input is masked first into (T, in) scratch, bf16 where it is held so, else fp32,
  // and the backward's dz A takes (T, in) fp32 before it is masked into din.
  const bool base_grads = !c.lora.enabled();
  auto base_b = [&](int64_t elements) {
    if (base_grads) round_b(elements);
  };
  const std::optional<ParamLayout> lora_layout =
      base_grads ? std::nullopt : std::optional<ParamLayout>(ParamLayout(c));
  const LayerOffsets no_adapters;
  // Layer l's offsets and adapters (none without LoRA).
  auto offsets = [&](int64_t l) -> const LayerOffsets& {
    return lora_layout ? lora_layout->layers[l] : no_adapters;
  };
  const int64_t r = c.lora.rank;
  const bool drops = c.lora.enabled() && c.lora.dropout > 0;
  auto masked = [&](const LoraPiece& p, int64_t in) {
    return drops ? Rounded(T * p.in * (bf16 && in == 0 ? kBf16 : kF32)) : 0;
  };
  auto lora_forward = [&](const LayerOffsets& o, int64_t w, int64_t in) {
    for (const LoraPiece& p : o.lora)
      if (p.base == w) {
        pool.Transient(masked(p, in) + Rounded(T * r * kF32) + Rounded(T * p.rows * kF32));
        round_a(T * r);
      }
  };
  auto lora_backward = [&](const LayerOffsets& o, int64_t w, int64_t in) {
    for (const LoraPiece& p : o.lora)
      if (p.base == w) {
        pool.Transient(masked(p, in) + 2 * Rounded(T * r * kF32) + Rounded(T * p.rows * kF32) +
                       (drops ? Rounded(T * p.in * kF32) : 0));
        round_a(in), round_a(T * p.rows), round_a(T * r);
        round_b(T * r), round_b(in);
      }
  };
  // The routed experts' adapters (cuda/moe_block.cc), of the experts' weight whose adapter's A
  // is at `lora_a` (-1: none), over the R rows (in, out wide; the rows held in bf16 with
  // rows16, else rounded for their products). Forward: z (R, r) and y (R, out). Backward: z, dy
  // (R, out) and dz, then dz and dz A (R, in).
  auto expert_lora_forward = [&](int64_t lora_a, int64_t in, int64_t out) {
    if (lora_a < 0) return;
    Buf z(&pool), y(&pool);
    z.Alloc(R * r * kF32);
    y.Alloc(R * out * kF32);
    if (!rows16) round_a(R * in);
    round_a(R * r);
  };
  auto expert_lora_backward = [&](int64_t lora_a, int64_t in, int64_t out) {
    if (lora_a < 0) return;
    Buf z(&pool), dy(&pool), dz(&pool), dx(&pool);
    z.Alloc(R * r * kF32);
    if (!rows16) round_a(R * in);
    dy.Alloc(R * out * kF32);
    dz.Alloc(R * r * kF32);
    round_a(R * out), round_b(R * r);
    dy.Free(), z.Free();
    dx.Alloc(R * in * kF32);
    round_a(R * r);
    if (!rows16) round_b(R * in);
  };

  // ---- the step's start: RoPE tables, ids, the residual stream, the balancing statistics.
  pool.At("the forward");
  Buf cos(&pool), sin(&pool), noise(&pool), ids(&pool), count(&pool), prob_sum(&pool);
  cos.Alloc(T * (c.rope_dim() / 2) * kF32);
  sin.Alloc(T * (c.rope_dim() / 2) * kF32);
  if (drops) noise.Alloc(T * 8);  // the batch's noise keys
  ids.Alloc(T * kI32);
  std::vector<Buf> x;
  x.reserve(L + 1);
  for (int64_t l = 0; l <= L; ++l) x.emplace_back(&pool, true).Alloc(T * H * kF32);
  if (c.num_moe_layers() > 0) count.Alloc(E * 8), prob_sum.Alloc(E * 8);

  std::vector<Layer> layers;
  layers.reserve(L);
  for (int64_t l = 0; l < L; ++l) layers.emplace_back(&pool);

  // A layer's attention from its normed input to x_mid (AttentionBlock::Forward).
  auto attention_forward = [&](Layer& a, const LayerOffsets& o) {
    std::vector<Buf>& at = a.attention;
    at[2].Alloc(T * Hq * D * kF32);
    at[3].Alloc(T * Hkv * D * kF32);
    at[4].Alloc(T * Hkv * D * kF32);
    if (c.qk_norm) {
      at[5].Alloc(T * Hq * D * kF32);
      at[6].Alloc(T * Hkv * D * kF32);
      at[7].Alloc(T * Hq * kF32);
      at[8].Alloc(T * Hkv * kF32);
    }
    for (int64_t w : {o.wq, o.wk, o.wv}) lora_forward(o, w, 0);
    if (bf16_attention) {  // q, k (after RoPE) and v kept in bf16, the fp32 ones freed
      at[14].Alloc(T * Hq * D * kBf16), at[2].Free();
      at[15].Alloc(T * Hkv * D * kBf16), at[3].Free();
      at[16].Alloc(T * Hkv * D * kBf16), at[4].Free();
    }
    at[9].Alloc(T * Hq * D * kF32);                                      // attn
    at[10].Alloc(T * Hq * kF32);                                         // lse
    if (bf16_attention) at[17].Alloc(T * Hq * D * kBf16), at[9].Free();  // attn kept in bf16
    at[11].Alloc(T * H * kF32);                                          // x_mid
    if (!bf16_attention) round_a(T * Hq * D);                            // o_proj's input
    lora_forward(o, o.wo, bf16_attention ? 0 : T * Hq * D);
  };
  // Multi-head latent attention's (cuda/mla_block.cc), on the fp32 attention kernels.
  auto mla_forward = [&](Layer& a, const LayerOffsets& o) {
    std::vector<Buf>&at = a.attention, &m = a.mla;
    at[2].Alloc(T * Hq * D * kF32);  // q
    if (Rq > 0) {
      m[0].Alloc(T * Rq * kF32);  // qa, qa_n, qa_rstd
      m[1].Alloc(T * Rq * kF32);
      m[2].Alloc(T * kF32);
      lora_forward(o, o.q_a, 0);
      round_a(T * Rq);
    }
    lora_forward(o, o.wq, T * Rq);  // q_b (of qa_n), or q_proj (of h1: Rq 0)
    Buf ckv(&pool), kvb(&pool), kr(&pool);
    ckv.Alloc(T * (Rkv + dr) * kF32);
    lora_forward(o, o.kv_a, 0);
    m[3].Alloc(T * Rkv * kF32);  // kv_c, kv_n, kv_rstd
    m[4].Alloc(T * Rkv * kF32);
    m[5].Alloc(T * kF32);
    kvb.Alloc(T * Hq * (dn + dv) * kF32);
    round_a(T * Rkv);
    lora_forward(o, o.kv_b, T * Rkv);
    kr.Alloc(T * dr * kF32);
    ckv.Free();
    pool.Transient(Rounded(T * Hq * dr * kF32));  // the queries' rope columns
    at[3].Alloc(T * Hq * D * kF32);               // k
    at[4].Alloc(T * Hq * D * kF32);               // v, padded
    kvb.Free();
    kr.Free();
    Buf padded(&pool);  // the attention's output before its padding is dropped
    padded.Alloc(T * Hq * D * kF32);
    at[10].Alloc(T * Hq * kF32);      // lse
    at[9].Alloc(T * Hq * dv * kF32);  // attn
    padded.Free();
    at[11].Alloc(T * H * kF32);  // x_mid
    round_a(T * Hq * dv);        // o_proj's input
    lora_forward(o, o.wo, T * Hq * dv);
  };

  auto forward = [&](int64_t l) {
    Layer& a = layers[l];
    std::vector<Buf>& at =
        a.attention;  // rstd1, h1, q, k, v, q_pre, k_pre, q_rstd, k_rstd, attn, lse, ...
    at[0].Alloc(T * kF32);
    at[1].Alloc(T * H * act_size);  // h1 (h1_16 in bf16 mode: the projections take it as is)
    const LayerOffsets& o = offsets(l);
    if (c.mla) {
      mla_forward(a, o);
    } else {
      attention_forward(a, o);
    }
    at[13].Alloc(T * kF32);  // rstd2
    if (!c.layer_is_moe[l]) {
      // bf16: the MLP's input and SwiGLU's output held in bf16, its input kept in bf16.
      const int64_t I = c.intermediate_size;
      at[12].Alloc(T * H * act_size);  // h2
      a.gu.Alloc(T * 2 * I * kF32);
      a.act.Alloc(T * I * act_size);
      lora_forward(o, o.gate_up, 0);
      if (bf16) a.gu16.Alloc(T * 2 * I * kBf16), a.gu.Free();
      lora_forward(o, o.down, 0);
      return;
    }
    at[12].Alloc(T * H * kF32);  // h2: the router's input too
    const int64_t I = c.moe_intermediate_size;
    std::vector<Buf>& r = a.router;
    r[0].Alloc(T * E * kF32);  // router_logits
    r[1].Alloc(T * E * kF32);  // probs
    r[2].Alloc(T * k * kF32);  // topk_w
    r[3].Alloc(T * k * kI32);  // topk_idx
    r[4].Alloc(A * kI32);      // sorted
    r[5].Alloc(A * kI32);      // slot_of
    a.ys.Alloc(A * H * kF32);
    a.xs.Alloc(A * H * rows_size);
    if (ep) {
      r[6].Alloc(R * kI32);
      r[7].Alloc(R * kI32);
      a.xr.Alloc(R * H * rows_size);
      pool.Transient(Rounded(R * H * rows_size));  // the dispatch's rows by source
      a.xs.Free();
    }
    a.gu.Alloc(R * 2 * I * kF32);
    a.act.Alloc(R * I * rows_size);
    if (!rows16) round_a(R * H);
    expert_lora_forward(o.gate_up_lora_a, H, 2 * I);
    if (!ep) a.xs.Free();                                      // permuted again in the backward
    if (rows16) a.gu16.Alloc(R * 2 * I * kBf16), a.gu.Free();  // SwiGLU's input kept in bf16
    Buf yr(&pool);
    if (ep) yr.Alloc(R * H * kF32);
    if (!rows16) round_a(R * I);
    expert_lora_forward(o.down_lora_a, I, H);
    if (ep) pool.Transient(Rounded(R * H * kF32));         // the combine's rows by source
    if (rows16) a.ys16.Alloc(A * H * kBf16), a.ys.Free();  // the outputs kept in bf16
    if (Is > 0) {  // the shared experts: their SwiGLU's input and output kept, their output summed
      a.shared[0].Alloc(T * 2 * Is * kF32);
      a.shared[1].Alloc(T * Is * kF32);
      round_a(T * H);
      Buf ysh(&pool);
      ysh.Alloc(T * H * kF32);
      round_a(T * Is);
    }
  };

  // ---- forward.
  int64_t recomputed_peak = 0;
  for (int64_t l = 0; l < L; ++l) {
    pool.At("the forward of layer " + std::to_string(l));
    forward(l);
    if (l < in.recompute_layers) {
      recomputed_peak = std::max(recomputed_peak, layers[l].Bytes());
      layers[l].Free();
    }
  }
  out.activation_bytes = recomputed_peak;
  for (const Buf& b : x) out.activation_bytes += b.asked();
  for (const Layer& a : layers) out.activation_bytes += a.Bytes();

  // ---- head: the final norm, then the chunked lm_head + cross-entropy (every token a loss row).
  pool.At("the head");
  Buf h_final(&pool), rstd_final(&pool), dh(&pool), dx(&pool), dprob_row(&pool);
  h_final.Alloc(T * H * kF32);
  rstd_final.Alloc(T * kF32);
  dh.Alloc(T * H * kF32);
  dx.Alloc(T * H * kF32);
  Buf ce_sum(&pool);  // the loss's sum, on the device until the step's end
  ce_sum.Alloc(8);
  {
    const int64_t n = T;
    const int64_t C = std::min(
        in.loss_chunk_rows > 0 ? in.loss_chunk_rows : DefaultLossChunkRows(V, /*gpu=*/true), n);
    const int64_t G = bf16 ? std::min(n, kGpuLossGroupChunks * C) : C;
    out.loss_chunk_rows = C;
    for (int64_t bytes : {n * 8, n * 4, (n + 1) * 8, C * H * kF32, C * V * kF32, C * H * kF32})
      out.loss_bytes += Rounded(bytes);
    if (bf16) out.loss_bytes += Rounded(G * H * kBf16) + Rounded(G * V * kBf16);
    pool.Transient(out.loss_bytes);
  }
  if (aux_grad) dprob_row.Alloc(E * kF32);
  // After the final norm's backward: its input, statistics and output gradient are done.
  h_final.Free();
  rstd_final.Free();
  dh.Free();

  // ---- backward: the per-layer gradients, allocated once.
  pool.At("the backward");
  std::vector<Buf> grads;
  grads.reserve(12);
  auto grad = [&](int64_t bytes) { grads.emplace_back(&pool).Alloc(bytes); };
  grad(T * H * kF32);        // dh2
  grad(T * H * kF32);        // dh1
  grad(T * Hq * dv * kF32);  // attention's (AttentionBlock::AllocGrads): dattn
  grad(T * Hq * D * kF32);   // dq
  grad(T * Hkv * D * kF32);  // dk
  grad(T * Hkv * D * kF32);  // dv
  if (c.qk_norm) {
    grad(T * Hq * D * kF32);   // dq_pre
    grad(T * Hkv * D * kF32);  // dk_pre
  }
  if (c.num_moe_layers() < L) {
    grad(T * c.intermediate_size * kF32);          // dense_dact
    grad(T * 2 * c.intermediate_size * act_size);  // dense_dgu (bf16: it feeds bf16 products)
  }
  if (c.num_moe_layers() > 0) {
    grad(T * k * kF32);                // dtopk_w
    grad(T * E * kF32);                // dlogits
    if (aux_grad) grad(T * E * kF32);  // dprobs
  }
  // Multi-head latent attention's backward (AttentionBlock::MlaBackward).
  auto mla_backward = [&](const LayerOffsets& o) {
    round_a(T * H), base_b(T * Hq * dv);  // o_proj
    lora_backward(o, o.wo, T * Hq * dv);
    Buf dout_padded(&pool), out_padded(&pool);
    dout_padded.Alloc(T * Hq * D * kF32);
    out_padded.Alloc(T * Hq * D * kF32);
    pool.Transient(Rounded(T * Hq * kF32));  // the kernels' log-sum-exp deltas
    dout_padded.Free();
    out_padded.Free();
    pool.Transient(Rounded(T * Hq * dr * kF32));  // the queries' rope columns
    Buf dkr(&pool), dqa_n(&pool), dqa(&pool), dkvb(&pool), dckv(&pool), dkv_n(&pool), dkv_c(&pool);
    dkr.Alloc(T * dr * kF32);
    if (Rq > 0) {
      dqa_n.Alloc(T * Rq * kF32);
      dqa.Alloc(T * Rq * kF32);
      round_a(T * Hq * D), base_b(T * Rq);  // q_b
      lora_backward(o, o.wq, T * Rq);
      round_a(T * Rq);  // q_a
      lora_backward(o, o.q_a, 0);
      dqa_n.Free();
      dqa.Free();
    } else {
      round_a(T * Hq * D);  // q_proj
      lora_backward(o, o.wq, 0);
    }
    dkvb.Alloc(T * Hq * (dn + dv) * kF32);
    dckv.Alloc(T * (Rkv + dr) * kF32);
    dkr.Free();
    dkv_n.Alloc(T * Rkv * kF32);
    round_a(T * Hq * (dn + dv)), base_b(T * Rkv);  // kv_b
    lora_backward(o, o.kv_b, T * Rkv);
    dkvb.Free();
    dkv_c.Alloc(T * Rkv * kF32);
    dkv_n.Free();
    dkv_c.Free();
    round_a(T * (Rkv + dr));  // kv_a
    lora_backward(o, o.kv_a, 0);
  };
  for (int64_t l = L - 1; l >= 0; --l) {
    Layer& a = layers[l];
    if (l < in.recompute_layers) {
      pool.At("the recomputed forward of layer " + std::to_string(l));
      forward(l);
    }
    pool.At("the backward of layer " + std::to_string(l));
    const LayerOffsets& o = offsets(l);
    if (!c.layer_is_moe[l]) {
      round_a(T * H);  // the down projection's output gradient (its other operands are bf16)
      lora_backward(o, o.down, 0);
      lora_backward(o, o.gate_up, 0);
    } else {
      const int64_t I = c.moe_intermediate_size;
      // dyr: the received output gradients (expert parallelism), which take dys's place.
      Buf dys(&pool), dyr(&pool), dact(&pool), dgu(&pool), dxs(&pool), dxs_back(&pool);
      dys.Alloc(A * H * rows_size);
      a.ys.Free();
      a.ys16.Free();
      if (ep) {
        dyr.Alloc(R * H * rows_size);
        pool.Transient(Rounded(R * H * rows_size));  // the dispatch's rows by source
        dys.Free();
      }
      dact.Alloc(R * I * kF32);
      if (!rows16) round_a(R * H), base_b(R * I);
      expert_lora_backward(o.down_lora_a, I, H);
      dys.Free();
      dyr.Free();
      a.act.Free();
      dgu.Alloc(R * 2 * I * rows_size);
      dact.Free();
      a.gu.Free();
      a.gu16.Free();
      if (!ep) a.xs.Alloc(A * H * rows_size);  // permuted again (dropped after the forward)
      dxs.Alloc(R * H * kF32);
      if (!rows16) round_a(R * 2 * I), base_b(R * H);
      expert_lora_backward(o.gate_up_lora_a, H, 2 * I);
      dgu.Free();
      a.xs.Free();
      a.xr.Free();
      if (ep) {  // the input gradients back, (A, H) sorted; the received ones (R, H) freed
        dxs_back.Alloc(A * H * kF32);
        pool.Transient(Rounded(R * H * kF32));  // the combine's rows by source
        dxs.Free();
      }
      if (Is > 0) {  // the shared experts' backward, into dh2
        Buf dsh_act(&pool), dsh_gu(&pool);
        dsh_act.Alloc(T * Is * kF32);
        round_a(T * H), base_b(T * Is);
        a.shared[1].Free();
        dsh_gu.Alloc(T * 2 * Is * kF32);
        dsh_act.Free();
        a.shared[0].Free();
        round_a(T * 2 * Is), base_b(T * H);
      }
    }
    if (c.mla) {
      mla_backward(o);
    } else {
      // Attention: o_proj (its input rounded unless kept in bf16), the kernels (log-sum-exp
      // deltas, the bf16 copy of dout), q/k/v.
      round_a(T * H);
      if (!bf16_attention) base_b(T * Hq * D);
      lora_backward(o, o.wo, bf16_attention ? 0 : T * Hq * D);
      pool.Transient(Rounded(T * Hq * kF32) + (bf16_attention ? Rounded(T * Hq * D * kBf16) : 0));
      round_a(T * Hq * D);
      for (int64_t w : {o.wq, o.wk, o.wv}) lora_backward(o, w, 0);
    }
    a.Free();
  }
  out.peak_bytes = pool.high();
  out.peak_at = pool.high_at();
  out.peak_activation_bytes = pool.high_kept();
  out.operand_bytes = operand_a.bytes() + operand_b.bytes();
  return out;
}

}  // namespace xt
