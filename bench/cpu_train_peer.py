"""PyTorch side of bench/cpu_train.sh: one fp32 training step of the same small Qwen3-MoE on the
CPU with HF transformers' Qwen3MoeForCausalLM (default attention implementation), or with
--model deepseek_v3 the same sizes as DeepseekV3ForCausalLM, --model gpt_oss as GptOssForCausalLM
(cpu_train_bench.cc's configs; GPT-OSS runs transformers' defaults for it: eager attention, as
it has no SDPA path, and experts through torch's grouped_mm).

    python bench/cpu_train_peer.py [--steps 5] [--threads N] [--batch 4] [--seq 512]
                                   [--model qwen3_moe|deepseek_v3|gpt_oss] [--lora RANK]
                                   [--lora-dropout P] [--lora-experts]

Batch of --batch rows x --seq random ids, labels = ids; a step is zero_grad + forward
(output_router_logits=True, so the load-balancing loss is in the loss) + backward +
clip_grad_norm_(1.0) + AdamW.step (lr 1e-4, weight_decay 0.01); one warm-up step, then --steps
timed steps. --lora RANK: PEFT LoRA adapters of that rank (lora_alpha 2 x rank) on the attention
projections, the optimizer over the adapters only (as HF Trainer builds it); --lora-dropout P:
their lora_dropout; --lora-experts: adapters on the routed experts' stacked weights too
(target_parameters mlp.experts.gate_up_proj and down_proj). Prints key=value lines: threads tokens steps step_s_median tokens_per_s peak_rss_mib
loss torch transformers.
"""
import argparse
import resource
import statistics
import time

import torch
import transformers
from transformers import (DeepseekV3Config, DeepseekV3ForCausalLM, GptOssConfig, GptOssForCausalLM,
                          Qwen3MoeConfig, Qwen3MoeForCausalLM)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--model", choices=["qwen3_moe", "deepseek_v3", "gpt_oss"], default="qwen3_moe")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0: train every weight)")
    ap.add_argument("--lora-dropout", type=float, default=0.0, help="PEFT's lora_dropout")
    ap.add_argument("--lora-experts", action="store_true",
                    help="adapters on the routed experts too (PEFT's target_parameters)")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = Qwen3MoeConfig(
        vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=64, intermediate_size=1024, moe_intermediate_size=256,
        num_experts=32, num_experts_per_tok=4, decoder_sparse_step=1, mlp_only_layers=[],
        norm_topk_prob=True, router_aux_loss_coef=0.01, output_router_logits=True,
        tie_word_embeddings=False, rms_norm_eps=1e-6, rope_theta=1e6,
        max_position_embeddings=4096, initializer_range=0.02)
    if args.model == "deepseek_v3":  # no balancing loss: output_router_logits is not used
        cfg = DeepseekV3Config(
            vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=8, q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64,
            qk_rope_head_dim=32, v_head_dim=64, intermediate_size=1024, moe_intermediate_size=256,
            n_routed_experts=32, num_experts_per_tok=4, n_group=4, topk_group=2,
            n_shared_experts=1, first_k_dense_replace=1, routed_scaling_factor=2.5,
            tie_word_embeddings=False, rms_norm_eps=1e-6, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            initializer_range=0.02)
        model = DeepseekV3ForCausalLM(cfg).float().train()
    elif args.model == "gpt_oss":
        cfg = GptOssConfig(
            vocab_size=8192, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=2, head_dim=64, intermediate_size=256, num_local_experts=32,
            num_experts_per_tok=4, sliding_window=128, router_aux_loss_coef=0.01,
            output_router_logits=True, tie_word_embeddings=False, rms_norm_eps=1e-5,
            max_position_embeddings=4096, initializer_range=0.02)
        model = GptOssForCausalLM(cfg).float().train()
    else:
        model = Qwen3MoeForCausalLM(cfg).float().train()
    if args.lora > 0:
        import peft
        targets = (["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]
                   if args.model == "deepseek_v3" else ["q_proj", "k_proj", "v_proj", "o_proj"])
        experts = (["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
                   if args.lora_experts else None)
        model = peft.get_peft_model(model, peft.LoraConfig(
            r=args.lora, lora_alpha=2 * args.lora, target_modules=targets,
            target_parameters=experts, lora_dropout=args.lora_dropout))
        print(f"peft={peft.__version__}")
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.seq))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if "norm" not in n and not n.endswith("bias")]
    no_decay = [p for n, p in named if "norm" in n or n.endswith("bias")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1e-4)

    loss = 0.0

    def step():
        nonlocal loss
        opt.zero_grad(set_to_none=False)
        extra = {"output_router_logits": True} if args.model != "deepseek_v3" else {}
        out = model(input_ids=ids, labels=ids, **extra)
        out.loss.backward()
        assert args.lora == 0 or all(p.grad is None for p in model.parameters()
                                     if not p.requires_grad)
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        loss = float(out.loss.detach())

    step()  # warm-up
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    tokens = args.batch * args.seq
    print(f"threads={torch.get_num_threads()}")
    print(f"tokens={tokens}\nsteps={args.steps}")
    print(f"step_s_median={med:.6f}")
    print(f"tokens_per_s={tokens / med:.3f}")
    print(f"peak_rss_mib={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
    print(f"loss={loss:.6f}")
    print(f"torch={torch.__version__}\ntransformers={transformers.__version__}")


if __name__ == "__main__":
    main()
