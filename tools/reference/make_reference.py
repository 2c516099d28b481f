#!/usr/bin/env python3
"""Generate reference fixtures for xtuner.cpp with Hugging Face transformers.

For each variant this builds a tiny model from a config with a fixed seed (random init, norm
weights 1 + 0.1*randn, other weights scaled ~1/sqrt(fan_in) so logits and router choices are not
degenerate), saves it with `save_pretrained` (hub tensor names, per-expert tensors), reloads it
from disk, and computes in float64 (`model.double()`, eager attention, eager experts, exactly as
the shared fixtures in shared/fixtures were made) the reference tensors:

  input_ids [2,16] int64, labels [2,16] int64 (unshifted, first tokens of each row = -100),
  logits [2,16,V], ce_loss [1] (float64 CE after the causal shift), aux_loss [1] (MoE only,
  transformers' load_balancing_loss_func as returned by the model), loss [1] (the model's loss
  with labels and output_router_logits=True: ce + router_aux_loss_coef*aux, computed by
  transformers in float32), grad.<hub name> for every saved weight (tied: embed_tokens only),
  hidden_states.<i>, router_logits.<layer> [B*S,E] (MoE layers only, keyed by layer index),
  packed.input_ids [1,N], packed.cu_seqlens [3] int64, packed.position_ids [1,N],
  packed.logits [1,N,V] (= each document run on its own, concatenated).

plus meta.json (seed, versions, losses, router gaps, sparse layers, ...). Before writing, it
checks engine-independent invariants (loss == ce + coef*aux, packed == per-document logits,
an independent re-implementation of the aux loss, gradient names == weight names, file sizes)
and, if the smallest float32 top-k router probability gap is < 1e-4, moves to the next seed.

DeepSeek-V3 (arch "deepseek_v3", DeepseekV3ForCausalLM) follows shared/fixtures/deepseek_v3_tiny:
no aux_loss and no router_logits (the model returns neither; loss = ce), and
grad.<...>.e_score_correction_bias is written as zeros (the bias is a buffer, moved by the
balancing rule, not by gradients). Here the bias is set to 0.05*randn (drawn after the other
weights) so that it changes expert choices; save_pretrained writes it (float32 even in a bf16
checkpoint, as transformers keeps it in float32). The router's outputs are captured with forward
hooks, its choice is recomputed in float32 (sigmoid, + bias, group score = sum of the 2 best
choices, topk_group groups, top-k) and must equal transformers'; a seed is skipped when the gap
between the last kept and first dropped group score, or between the k-th and (k+1)-th masked
choice, is < 1e-4 anywhere (batch and both packed documents).

RoPE scaling (the *_yarn variants): the reloaded config must mean the same rope_parameters to
transformers (a v4 rope_scaling comes back with its old "type" key as well), the model's rotary
embedding must be yarn with inv_freq equal to a written-out YaRN ramp (yarn_ramp) that has kept,
mixed and divided frequencies, its cos/sin factor and every layer's softmax scale (DeepSeek-V3:
times mscale(factor, mscale_all_dim)^2) must be the expected ones, and the logits of the same weights
with plain RoPE must differ by > 1e-2; meta.json then records the ramp, the frequencies, the factors
and those differences.

FP8 (the *_fp8 variants, spec key fp8=[block rows, block columns]): after save_pretrained, every
2-D linear weight (attention, MLA's kv_a_proj_with_mqa included, MLP, experts and shared experts;
not the embeddings, lm_head, norms or router, as in the hub's -FP8 releases) is block-quantized:
per block scale = amax / 448, codes = (w / scale) clamped to +-448, rounded to float8_e4m3fn
(transformers' own Fp8Quantize computes w * (448 / amax), which can round differently:
tools/reference/make_fp8_quantize_reference.py records that one); the file then holds the F8_E4M3 codes and "<name>_scale_inv" (F32
[ceil(rows / br), ceil(cols / bc)]), and config.json a quantization_config (quant_method fp8,
fmt e4m3, weight_block_size). The reference model is transformers' own FP8 load of that
directory (FineGrainedFP8Config, dequantize=True: fp32 codes times scales, to float32); a float32
checkpoint of the dequantized weights written here, loaded by transformers, must give it
bit-identical logits (the "roundtrip"), and the reference tensors come from that float model.

Usage (from the repo root, with the venv of tools/reference/README.md):
  python tools/reference/make_reference.py                      # all variants
  python tools/reference/make_reference.py --variant mixtral_k1_mqa --out tests/data/variants
  python tools/reference/make_reference.py --list
"""

import argparse
import copy
import glob
import json
import math
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

MAX_FILE_BYTES = int(1.5 * 1024 * 1024)
MIN_PROB_GAP = 1e-4
LOSS_TOL = 1e-6

# --------------------------------------------------------------------------------------------
# Variants
# --------------------------------------------------------------------------------------------


def _v4_qwen3_moe(cfg):
    """Rewrite a transformers-5 Qwen3-MoE config.json dict in the transformers-4 hub spellings."""
    out = {}
    for k, v in cfg.items():
        if k == "num_local_experts":
            out["num_experts"] = v
        elif k == "rope_parameters":
            assert v.get("rope_type", "default") == "default", v
            out["rope_theta"] = v["rope_theta"]
            out["rope_scaling"] = None
        elif k == "dtype":
            out["torch_dtype"] = v
        else:
            out[k] = v
    return out


def _v4_mixtral(cfg):
    """transformers-4 Mixtral spellings: top-level rope_theta (no rope_scaling key at all, as in
    mistralai/Mixtral-8x7B-v0.1), torch_dtype; num_local_experts is the v4 name too."""
    out = {}
    for k, v in cfg.items():
        if k == "rope_parameters":
            assert v.get("rope_type", "default") == "default", v
            out["rope_theta"] = v["rope_theta"]
        elif k == "dtype":
            out["torch_dtype"] = v
        else:
            out[k] = v
    return out


def _v4_rope_scaling(rope_parameters):
    """transformers-4 "rope_scaling" for a transformers-5 rope_parameters dict: null for plain RoPE,
    else the scaling keys with the type under the old name "type" and without rope_theta (which is
    top-level in v4), as in deepseek-ai/DeepSeek-V3's config.json."""
    if rope_parameters.get("rope_type", "default") == "default":
        return None
    out = {"type": rope_parameters["rope_type"]}
    out.update({k: v for k, v in rope_parameters.items() if k not in ("rope_type", "rope_theta")})
    return out


def _v4_deepseek_v3(cfg):
    """transformers-4 / hub spellings of a DeepSeek-V3 config.json: top-level rope_theta and
    "rope_scaling" (null, or e.g. {"type": "yarn", "factor": ..., ...}) instead of rope_parameters,
    torch_dtype instead of dtype, and none of the keys transformers 5 derives and writes but hub
    configs do not have (head_dim, which transformers sets to qk_rope_head_dim, and qk_head_dim =
    qk_nope_head_dim + qk_rope_head_dim). Adds the hub-only routing keys of deepseek-ai/DeepSeek-V3
    that transformers does not use (scoring_func, topk_method, moe_layer_freq). rope_interleave is
    kept as saved."""
    out = {}
    for k, v in cfg.items():
        if k == "rope_parameters":
            out["rope_theta"] = v["rope_theta"]
            out["rope_scaling"] = _v4_rope_scaling(v)
        elif k == "dtype":
            out["torch_dtype"] = v
        elif k in ("head_dim", "qk_head_dim"):
            continue
        else:
            out[k] = v
    out.update(scoring_func="sigmoid", topk_method="noaux_tc", moe_layer_freq=1)
    return out


def _drop_rope_interleave(cfg):
    """Hub DeepSeek-V3 configs have no rope_interleave key; transformers then defaults it to true."""
    assert cfg["rope_interleave"] is True, cfg["rope_interleave"]
    return {k: v for k, v in cfg.items() if k != "rope_interleave"}


VARIANTS = {
    "qwen3_moe_v4": dict(
        arch="qwen3_moe",
        seed=4001,
        config=dict(
            vocab_size=288, hidden_size=48, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=3, head_dim=8,
            intermediate_size=40, moe_intermediate_size=24,
            num_experts=6, num_experts_per_tok=3, norm_topk_prob=False,
            decoder_sparse_step=2, mlp_only_layers=[2],
            tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
            router_aux_loss_coef=0.03, rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        rewrite=_v4_qwen3_moe,
        prompt_lens=(4, 6), doc_lens=(11, 15),
    ),
    "qwen3_moe_mlp_only": dict(
        arch="qwen3_moe",
        seed=4102,
        config=dict(
            vocab_size=256, hidden_size=32, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=48, moe_intermediate_size=16,
            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[0, 2],
            tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            router_aux_loss_coef=0.02, rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        prompt_lens=(2, 7), doc_lens=(9, 17),
    ),
    "qwen3_dense_gqa4_tied": dict(
        arch="qwen3",
        seed=4201,
        config=dict(
            vocab_size=320, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=8, num_key_value_heads=2, head_dim=12,
            intermediate_size=80, tie_word_embeddings=True, rms_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            max_position_embeddings=256,
        ),
        max_shard_size="150KB",
        prompt_lens=(5, 3), doc_lens=(11, 15),
    ),
    "mixtral_k1_mqa": dict(
        arch="mixtral",
        seed=4301,
        config=dict(
            vocab_size=256, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, head_dim=16,
            intermediate_size=32, num_local_experts=8, num_experts_per_tok=1,
            router_aux_loss_coef=0.01, rms_norm_eps=1e-5, sliding_window=None,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            max_position_embeddings=256,
        ),
        rewrite=_v4_mixtral,
        prompt_lens=(5, 3), doc_lens=(11, 15),
    ),
    "qwen3_moe_bf16_kE": dict(
        arch="qwen3_moe",
        seed=4401,
        config=dict(
            vocab_size=256, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, head_dim=8,
            intermediate_size=64, moe_intermediate_size=16,
            num_experts=4, num_experts_per_tok=4, norm_topk_prob=True,
            tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            router_aux_loss_coef=0.01, rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        bf16=True,
        prompt_lens=(3, 5), doc_lens=(10, 16),
    ),
    # DeepSeek-V3: sigmoid router with e_score_correction_bias (set to 0.05*randn here, so it
    # changes choices), group-limited top-k, shared experts, MLA attention; loss = ce (no aux).
    "deepseek_v3_v4_plain_q": dict(
        arch="deepseek_v3",
        seed=4501,
        config=dict(
            vocab_size=256, hidden_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=None, kv_lora_rank=16, qk_nope_head_dim=12, qk_rope_head_dim=4, v_head_dim=8,
            rope_interleave=False,
            intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=8, num_experts_per_tok=3, n_group=4, topk_group=2,
            norm_topk_prob=False, first_k_dense_replace=0, n_shared_experts=2,
            routed_scaling_factor=1.5, tie_word_embeddings=True,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        rewrite=_v4_deepseek_v3,
        prompt_lens=(4, 6), doc_lens=(11, 15),
    ),
    "deepseek_v3_groups": dict(
        arch="deepseek_v3",
        seed=4601,
        config=dict(
            vocab_size=288, hidden_size=32, num_hidden_layers=3,
            num_attention_heads=6, num_key_value_heads=6,
            q_lora_rank=24, kv_lora_rank=16, qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=10,
            rope_interleave=True,
            intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=16, num_experts_per_tok=4, n_group=4, topk_group=3,
            norm_topk_prob=True, first_k_dense_replace=1, n_shared_experts=1,
            routed_scaling_factor=2.5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-3, max_position_embeddings=256,
        ),
        max_shard_size="150KB",
        prompt_lens=(5, 3), doc_lens=(9, 17),
    ),
    "deepseek_v3_bf16": dict(
        arch="deepseek_v3",
        seed=4701,
        config=dict(
            vocab_size=256, hidden_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=24,
            rope_interleave=True,
            intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            norm_topk_prob=True, first_k_dense_replace=1, n_shared_experts=1,
            routed_scaling_factor=2.5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        bf16=True,
        rewrite=_drop_rope_interleave,
        prompt_lens=(3, 5), doc_lens=(10, 16),
    ),
    # YaRN RoPE scaling. The original context is made small so that YaRN's ramp between the
    # extrapolated (original) and interpolated (/factor) frequencies falls inside the rotary dims;
    # build() checks that transformers uses yarn and that the logits differ without it.
    "qwen3_moe_yarn": dict(
        arch="qwen3_moe",
        seed=4801,
        config=dict(
            vocab_size=256, hidden_size=32, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=48, moe_intermediate_size=16,
            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[],
            tie_word_embeddings=False,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 32},
            router_aux_loss_coef=0.02, rms_norm_eps=1e-6, max_position_embeddings=128,
        ),
        prompt_lens=(4, 2), doc_lens=(12, 14),
    ),
    # Block-quantized FP8 checkpoints, as DeepSeek-V3's and Qwen3's -FP8 releases ship them: the
    # "proj" weights F8_E4M3 with per-block F32 scales, the rest bf16 (the router bias F32).
    # Every weight is a whole number of blocks (transformers' dequantization needs that).
    "qwen3_moe_fp8": dict(
        arch="qwen3_moe",
        seed=5002,
        config=dict(
            vocab_size=256, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16,
            intermediate_size=64, moe_intermediate_size=32,
            num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
            decoder_sparse_step=1, mlp_only_layers=[1],
            tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
            router_aux_loss_coef=0.001, rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        bf16=True,
        fp8=[16, 32],
        prompt_lens=(4, 6), doc_lens=(11, 15),
    ),
    "deepseek_v3_fp8": dict(
        arch="deepseek_v3",
        seed=5101,
        config=dict(
            vocab_size=256, hidden_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
            rope_interleave=True,
            intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=8, num_experts_per_tok=2, n_group=2, topk_group=1,
            norm_topk_prob=True, first_k_dense_replace=1, n_shared_experts=1,
            routed_scaling_factor=2.5, tie_word_embeddings=False,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
            rms_norm_eps=1e-6, max_position_embeddings=256,
        ),
        bf16=True,
        fp8=[16, 16],
        rewrite=_v4_deepseek_v3,
        prompt_lens=(5, 3), doc_lens=(10, 16),
    ),
    "deepseek_v3_yarn": dict(
        arch="deepseek_v3",
        seed=4901,
        config=dict(
            vocab_size=256, hidden_size=48, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=4,
            q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=12, qk_rope_head_dim=16, v_head_dim=16,
            rope_interleave=True,
            intermediate_size=64, moe_intermediate_size=16,
            n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2,
            norm_topk_prob=True, first_k_dense_replace=1, n_shared_experts=1,
            routed_scaling_factor=2.5, tie_word_embeddings=False,
            # the shape of deepseek-ai/DeepSeek-V3's rope_scaling, with a small original context
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 40,
                             "original_max_position_embeddings": 64, "beta_fast": 32, "beta_slow": 1,
                             "mscale": 1.0, "mscale_all_dim": 1.0},
            rms_norm_eps=1e-6, max_position_embeddings=2560,
        ),
        rewrite=_v4_deepseek_v3,
        prompt_lens=(5, 4), doc_lens=(9, 17),
    ),
}


def arch_classes(arch):
    if arch == "qwen3_moe":
        return transformers.Qwen3MoeConfig, transformers.Qwen3MoeForCausalLM
    if arch == "qwen3":
        return transformers.Qwen3Config, transformers.Qwen3ForCausalLM
    if arch == "mixtral":
        return transformers.MixtralConfig, transformers.MixtralForCausalLM
    if arch == "deepseek_v3":
        return transformers.DeepseekV3Config, transformers.DeepseekV3ForCausalLM
    raise ValueError(arch)


def is_moe_block(module):
    # DeepseekV3MoE: routed experts + DeepseekV3TopkRouter gate + shared_experts MLP
    return type(module).__name__.endswith("SparseMoeBlock") or type(module).__name__ == "DeepseekV3MoE"


def moe_layer_indices(model):
    return [i for i, layer in enumerate(model.model.layers) if is_moe_block(layer.mlp)]


# --------------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def init_weights(model, gen, tied):
    """Deterministic init (iteration over sorted parameter names)."""
    hidden = model.config.hidden_size
    params = dict(model.named_parameters())  # tied lm_head is deduplicated here
    for name in sorted(params):
        p = params[name]
        shape = tuple(p.shape)

        def randn(*s):
            return torch.randn(*s, generator=gen, dtype=torch.float32)

        if name.endswith("norm.weight"):
            p.copy_(1.0 + 0.1 * randn(*shape))
        elif name.endswith("embed_tokens.weight"):
            # tied: it is also the lm_head, so give it lm_head scale
            std = 1.0 / hidden ** 0.5 if tied else 1.0
            p.copy_(std * randn(*shape))
        elif name == "lm_head.weight":
            p.copy_(1.0 / hidden ** 0.5 * randn(*shape))
        elif name.endswith("mlp.gate.weight"):  # router [E, H]
            p.copy_(2.0 / hidden ** 0.5 * randn(*shape))
        elif name.endswith("experts.gate_up_proj"):  # [E, 2I, H]
            p.copy_(randn(*shape) / shape[-1] ** 0.5)
        elif name.endswith("experts.down_proj"):  # [E, H, I]
            p.copy_(0.5 * randn(*shape) / shape[-1] ** 0.5)
        elif p.dim() == 2:  # nn.Linear [out, in]
            gain = 0.5 if (name.endswith("o_proj.weight") or name.endswith("down_proj.weight")) else 1.0
            p.copy_(gain * randn(*shape) / shape[1] ** 0.5)
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")


BIAS_STD = 0.05


@torch.no_grad()
def init_score_bias(model, gen):
    """DeepSeek-V3: e_score_correction_bias is a buffer (zeros in transformers' init; training moves
    it by the load-balancing rule). Give it BIAS_STD*randn, drawn after the parameters, layer by
    layer, so that it changes some expert choices."""
    for name, b in sorted(model.named_buffers()):
        if name.endswith("e_score_correction_bias"):
            b.copy_(BIAS_STD * torch.randn(*b.shape, generator=gen, dtype=torch.float32))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


FP8_MAX = 448.0  # the largest float8_e4m3fn


def fp8_quantize(w, block):
    """Block-quantize a 2-D float tensor: (float8_e4m3fn codes, float32 scales [ceil(r/br), ceil(c/bc)])."""
    r, c = w.shape
    br, bc = block
    assert r % br == 0 and c % bc == 0, (tuple(w.shape), block)  # transformers' dequantize needs it
    blocks = w.float().reshape(r // br, br, c // bc, bc)
    amax = blocks.abs().amax(dim=(1, 3), keepdim=True).clamp(min=1e-12)
    scale = amax / FP8_MAX
    codes = (blocks / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return codes.reshape(r, c), scale.reshape(r // br, c // bc)


def fp8_dequantize(codes, scale, block):
    br, bc = block
    s = scale.repeat_interleave(br, 0).repeat_interleave(bc, 1)
    return codes.to(torch.float32) * s


def fp8_quantized(name, t):
    """The weights a hub -FP8 release quantizes: every 2-D linear weight of attention (MLA's
    kv_a_proj_with_mqa included), MLP, experts and shared experts; not the embeddings, lm_head,
    norms or router (mlp.gate)."""
    return (t.dim() == 2 and name.endswith(".weight") and "embed_tokens" not in name
            and name != "lm_head.weight" and not name.endswith("mlp.gate.weight"))


def write_fp8_checkpoint(out_dir, block, cfg_json):
    """Quantize the saved linear weights (fp8_quantized) in place; returns the dequantized float32 weights
    (every tensor, by hub name) and adds quantization_config to cfg_json."""
    files = sorted(glob.glob(os.path.join(out_dir, "*.safetensors")))
    assert len(files) == 1, files  # (the FP8 variants are not sharded)
    tensors = load_file(files[0])
    dequantized, n = {}, 0
    for name in sorted(tensors):
        t = tensors[name]
        if fp8_quantized(name, t):
            codes, scale = fp8_quantize(t, block)
            tensors[name] = codes
            tensors[name + "_scale_inv"] = scale
            dequantized[name] = fp8_dequantize(codes, scale, block)
            n += 1
        else:
            dequantized[name] = t.float()
    assert n > 0
    save_file(tensors, files[0], metadata={"format": "pt"})
    cfg_json["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
        "weight_block_size": list(block)}
    return dequantized


def load_reference_model(cls, path):
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if cls._can_set_experts_implementation():  # MoE models: no grouped_mm (it has no float64 kernel)
        kw["experts_implementation"] = "eager"
    return cls.from_pretrained(path, **kw).double()


def read_saved_weights(path):
    out = {}
    for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
        out.update(load_file(f))
    return out


def hub_named_grads(model):
    """Return {hub name: grad} by letting transformers' own save path (incl. the reverse of the
    fused-expert conversion and the removal of tied weights) write the gradients."""
    gm = copy.deepcopy(model)
    with torch.no_grad():
        for name, p in gm.named_parameters():
            src = dict(model.named_parameters())[name]
            assert src.grad is not None, f"no grad for {name}"
            p.data = src.grad.detach().clone()
        # DeepSeek-V3's e_score_correction_bias is a buffer that save_pretrained writes, so it shows
        # up here with its value; its gradient entry is zeros, as in shared/fixtures/deepseek_v3_tiny
        for name, b in gm.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.data = torch.zeros_like(b.data, dtype=torch.float64)
    with tempfile.TemporaryDirectory() as tmp:
        gm.save_pretrained(tmp, max_shard_size="1GB")
        return read_saved_weights(tmp)


def independent_aux_loss(router_logits, num_experts, top_k):
    """float64 re-implementation of Switch-style load balancing over all MoE layers."""
    f = torch.zeros(num_experts, dtype=torch.float64)
    p = torch.zeros(num_experts, dtype=torch.float64)
    rows = 0
    for lg in router_logits:
        probs = torch.softmax(lg.double(), dim=-1)
        sel = torch.topk(probs, top_k, dim=-1).indices
        f += torch.bincount(sel.reshape(-1), minlength=num_experts).double()
        p += probs.sum(0)
        rows += lg.shape[0]
    return float(num_experts * torch.sum((f / rows) * (p / rows)))


def topk_gaps(router_logits_list, k):
    """(min float32 prob gap, min logit gap) between the k-th and (k+1)-th largest, or None if k==E."""
    prob_gap, logit_gap = None, None
    for lg in router_logits_list:
        E = lg.shape[-1]
        if k >= E:
            return None, None
        probs = torch.softmax(lg.float(), dim=-1)  # what transformers' router does
        s = probs.sort(dim=-1, descending=True).values
        g = float((s[:, k - 1] - s[:, k]).min())
        prob_gap = g if prob_gap is None else min(prob_gap, g)
        s = lg.sort(dim=-1, descending=True).values
        g = float((s[:, k - 1] - s[:, k]).min())
        logit_gap = g if logit_gap is None else min(logit_gap, g)
    return prob_gap, logit_gap


def grouped_sigmoid_choice(logits32, bias, n_group, topk_group, k):
    """DeepseekV3TopkRouter's expert choice, in float32 throughout: scores = sigmoid(logits),
    choice = scores + bias, group score = sum of its 2 largest choices, keep the topk_group best
    groups, experts of the other groups -> -inf (transformers 5.17; DeepSeek's own remote code
    uses 0.0), top-k by choice. Returns (sorted expert ids [T,k], smallest gap between the last kept
    and the first dropped group score (None if topk_group == n_group), smallest gap between the
    k-th and (k+1)-th masked choice (None if k == kept experts), smallest selected choice)."""
    scores = torch.sigmoid(logits32.float())
    choice = scores + bias.float()
    T, E = choice.shape
    gsz = E // n_group
    g = choice.view(T, n_group, gsz).topk(2, dim=-1).values.sum(-1)
    gv, gi = g.sort(dim=-1, descending=True)
    group_gap = float((gv[:, topk_group - 1] - gv[:, topk_group]).min()) if topk_group < n_group else None
    keep = torch.zeros(T, n_group, dtype=torch.bool)
    keep.scatter_(1, gi[:, :topk_group], True)
    mask = keep.unsqueeze(-1).expand(T, n_group, gsz).reshape(T, E)
    cv, ci = choice.masked_fill(~mask, float("-inf")).sort(dim=-1, descending=True)
    choice_gap = float((cv[:, k - 1] - cv[:, k]).min()) if k < topk_group * gsz else None
    return ci[:, :k].sort(-1).values, group_gap, choice_gap, float(cv[:, k - 1].min())


def rope_semantics(rope_parameters):
    """rope_parameters as transformers uses them (without the v4 alias "type" of rope_type)."""
    return {k: v for k, v in rope_parameters.items() if k != "type"}


def _yarn_get_mscale(scale, mscale=1.0):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_ramp(rp, dim):
    """YaRN's correction range and per-frequency weights for a rotary width `dim`, written out as in
    DeepSeek's code and transformers 5.17 (_compute_yarn_parameters): the rotary dim at which a
    frequency makes `rot` turns over the original context is d(rot) = dim*ln(orig/(2*pi*rot)) /
    (2*ln(theta)); low = floor(d(beta_fast)) >= 0, high = ceil(d(beta_slow)) <= dim-1 (no rounding
    if truncate is false); ramp_i = clamp((i - low)/(high - low), 0, 1) for i < dim/2 (high+0.001
    when low == high); frequency i = w_i * theta^(-2i/dim) + (1 - w_i) * theta^(-2i/dim)/factor
    with the extrapolation weight w_i = 1 - ramp_i. Returns (low, high, [w_i])."""
    base, orig = rp["rope_theta"], rp["original_max_position_embeddings"]

    def corr(rot):
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = corr(rp.get("beta_fast") or 32), corr(rp.get("beta_slow") or 1)
    if rp.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    span = (hi - lo) if hi != lo else 0.001
    return lo, hi, [1.0 - min(max((i - lo) / span, 0.0), 1.0) for i in range(dim // 2)]


@torch.no_grad()
def rope_scaling_meta(m, model_cls, lc, input_ids, logits, has_experts, is_ds):
    """For a variant with YaRN RoPE: check that the loaded model really uses it (inv_freq = the
    ramp of yarn_ramp, cos/sin factor, DeepSeek-V3's softmax mscale) and that the logits differ
    from the same weights with plain RoPE; returns the meta.json entries."""
    rp = rope_semantics(lc.rope_parameters)
    assert rp["rope_type"] == "yarn", rp  # the only scaled RoPE the variants use
    rot = m.model.rotary_emb
    assert rot.rope_type == "yarn", rot.rope_type
    dim = lc.qk_rope_head_dim if is_ds else lc.head_dim  # transformers' DeepSeek-V3 head_dim = rope dim
    assert lc.head_dim == dim, (lc.head_dim, dim)
    low, high, w = yarn_ramp(rp, dim)
    # the ramp must lie inside the rotary dims: some frequencies kept, some divided by factor, some mixed
    assert 1.0 in w and 0.0 in w and any(0.0 < x < 1.0 for x in w), (low, high, w)
    inv0 = 1.0 / rp["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    wt = torch.tensor(w, dtype=torch.float64)
    want = inv0 * wt + inv0 / rp["factor"] * (1.0 - wt)
    got = rot.inv_freq.double()
    assert float(((got - want) / want).abs().max()) < 1e-6, (got, want)
    f = rp["factor"]
    if rp.get("attention_factor") is not None:
        af = rp["attention_factor"]
    elif rp.get("mscale") and rp.get("mscale_all_dim"):
        af = _yarn_get_mscale(f, rp["mscale"]) / _yarn_get_mscale(f, rp["mscale_all_dim"])
    else:
        af = _yarn_get_mscale(f)
    assert abs(rot.attention_scaling - af) < 1e-12, (rot.attention_scaling, af)
    if is_ds:  # yarn_apply_mscale: DeepSeek-V3 multiplies its softmax scale by mscale(factor, mscale_all_dim)^2
        ms = _yarn_get_mscale(f, rp["mscale_all_dim"]) if rp.get("mscale_all_dim") else 1.0
        scale = lc.qk_head_dim ** -0.5 * ms * ms
    else:
        scale = lc.head_dim ** -0.5
    for layer in m.model.layers:
        assert abs(layer.self_attn.scaling - scale) < 1e-12, (layer.self_attn.scaling, scale)

    # the same weights with plain RoPE (theta kept): all of yarn off, then only its frequencies off
    m.eval()
    base = m(input_ids=input_ids, use_cache=False).logits
    assert float((base - logits).abs().max()) < 1e-12
    cfg0 = copy.deepcopy(lc)
    cfg0.rope_parameters = {"rope_type": "default", "rope_theta": rp["rope_theta"]}
    m0 = model_cls(cfg0).double()
    m0.load_state_dict(m.state_dict())
    m0.set_attn_implementation("eager")
    if has_experts:
        m0.set_experts_implementation("eager")
    m0.eval()
    assert m0.model.rotary_emb.rope_type == "default" and m0.model.rotary_emb.attention_scaling == 1.0
    diff_all = float((m0(input_ids=input_ids, use_cache=False).logits - base).abs().max())
    m0.model.rotary_emb.attention_scaling = rot.attention_scaling
    for l0, l1 in zip(m0.model.layers, m.model.layers):
        l0.self_attn.scaling = l1.self_attn.scaling
    diff_freq = float((m0(input_ids=input_ids, use_cache=False).logits - base).abs().max())
    assert diff_all > 1e-2 and diff_freq > 1e-2, (diff_all, diff_freq)
    return {
        "rope_type": "yarn",
        "rope_dim": dim,
        "yarn_correction_range": [low, high],
        "yarn_extrapolation_weight": w,
        "rope_inv_freq": [float(x) for x in got],
        "rope_attention_factor": af,
        "attention_softmax_scale": scale,
        "logits_max_abs": float(base.abs().max()),
        "logits_max_abs_diff_without_rope_scaling": diff_all,
        "logits_max_abs_diff_default_freqs_only": diff_freq,
    }


def _min_opt(a, b):
    return b if a is None else a if b is None else min(a, b)


def scalar(x):
    return torch.tensor([float(x)], dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------


def build(name, spec, seed, out_dir):
    cfg_cls, model_cls = arch_classes(spec["arch"])
    is_moe = spec["arch"] in ("qwen3_moe", "mixtral")  # softmax router + aux loss
    is_ds = spec["arch"] == "deepseek_v3"  # sigmoid group-limited router, no aux loss
    has_experts = is_moe or is_ds
    bf16 = spec.get("bf16", False)
    if is_ds:  # (DeepseekV3Config has no output_router_logits; the shared fixture has no such key)
        config = cfg_cls(**spec["config"])
    else:
        config = cfg_cls(**spec["config"], output_router_logits=is_moe)
    tied = bool(config.tie_word_embeddings)
    V, L = config.vocab_size, config.num_hidden_layers

    torch.manual_seed(seed)
    model = model_cls(config)
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, gen, tied)
    if is_ds:
        init_score_bias(model, gen)
    if tied:
        assert model.lm_head.weight is model.model.embed_tokens.weight
    save_model = model
    if bf16:
        # round the weights to bf16 values but keep this in-memory copy in float32 (a bf16
        # model.to() would also round the RoPE inv_freq buffer); save a bf16 copy
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        save_model = copy.deepcopy(model).to(torch.bfloat16)
        save_model.config.dtype = torch.bfloat16
        # transformers keeps e_score_correction_bias in float32 in a bf16 model
        # (_keep_in_fp32_modules_strict) and saves it as F32, as in the DeepSeek-V3 hub checkpoint
        src = dict(model.named_buffers())
        for bname, b in save_model.named_buffers():
            if bname.endswith("e_score_correction_bias"):
                b.data = src[bname].detach().clone()

    # ---- save (config + hub-named weights), then rewrite the config if asked ----
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    save_kw = {}
    if spec.get("max_shard_size"):
        save_kw["max_shard_size"] = spec["max_shard_size"]
    save_model.save_pretrained(out_dir, **save_kw)
    cfg_path = os.path.join(out_dir, "config.json")
    with open(cfg_path) as f:
        cfg_json = json.load(f)
    fp8 = spec.get("fp8")
    if spec.get("rewrite"):
        cfg_json = spec["rewrite"](cfg_json)
    if fp8:
        dequantized = write_fp8_checkpoint(out_dir, fp8, cfg_json)
    if spec.get("rewrite") or fp8:
        with open(cfg_path, "w") as f:
            json.dump(cfg_json, f, indent=2, sort_keys=True)
            f.write("\n")

    # ---- reload from disk exactly as a user would, upcast to float64 ----
    m = load_reference_model(model_cls, out_dir)
    if fp8:
        # transformers dequantized the FP8 weights on load (no GPU: dequantize=True); it must have
        # the weights dequantized here, bit for bit: a float32 checkpoint of them gives the same
        # logits. That float model is the reference from here on (transformers' FP8 model keeps a
        # quantizer that would re-quantize the gradients that hub_named_grads saves).
        with tempfile.TemporaryDirectory() as tmp:
            plain = {k: v for k, v in cfg_json.items() if k != "quantization_config"}
            plain["dtype"] = "float32"
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(plain, f)
            save_file(dequantized, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
            m_float = load_reference_model(model_cls, tmp)
        probe = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            a = m(input_ids=probe, use_cache=False).logits
            b = m_float(input_ids=probe, use_cache=False).logits
        fp8_roundtrip = float((a - b).abs().max())
        assert fp8_roundtrip == 0.0, fp8_roundtrip
        m = m_float
        # the in-memory model takes the dequantized weights too (the roundtrip check below)
        model = copy.deepcopy(m_float).float()
    lc = m.config
    # the (possibly v4-spelled) config must mean the same thing to transformers
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads",
                "head_dim", "tie_word_embeddings", "rms_norm_eps", "vocab_size"):
        assert getattr(lc, key) == getattr(config, key), key
    # (a v4 rope_scaling is read back with its old key "type" next to rope_type)
    assert rope_semantics(lc.rope_parameters) == rope_semantics(config.rope_parameters), \
        (lc.rope_parameters, config.rope_parameters)
    assert m.model.rotary_emb.rope_type == config.rope_parameters["rope_type"], m.model.rotary_emb.rope_type
    if is_moe:
        for key in ("num_experts_per_tok", "router_aux_loss_coef"):
            assert getattr(lc, key) == getattr(config, key), key
        ne = "num_local_experts" if spec["arch"] == "mixtral" else "num_experts"
        assert getattr(lc, ne) == getattr(config, ne)
    if is_ds:
        for key in ("n_routed_experts", "num_experts_per_tok", "n_group", "topk_group", "norm_topk_prob",
                    "first_k_dense_replace", "n_shared_experts", "routed_scaling_factor", "q_lora_rank",
                    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_interleave",
                    "intermediate_size", "moe_intermediate_size", "qk_head_dim"):
            assert getattr(lc, key) == getattr(config, key), (key, getattr(lc, key), getattr(config, key))
        # the buffer is loaded from model.safetensors (not re-initialised to zeros)
        for layer, ref_layer in zip(m.model.layers, model.model.layers):
            if is_moe_block(layer.mlp):
                assert torch.equal(layer.mlp.gate.e_score_correction_bias.float(),
                                   ref_layer.mlp.gate.e_score_correction_bias)
                assert layer.mlp.gate.e_score_correction_bias.abs().min() > 0
    if spec["arch"] == "qwen3_moe":
        assert lc.mlp_only_layers == config.mlp_only_layers
        assert lc.decoder_sparse_step == config.decoder_sparse_step
        assert lc.norm_topk_prob == config.norm_topk_prob
    if tied:
        assert m.lm_head.weight is m.model.embed_tokens.weight

    saved = read_saved_weights(out_dir)
    want_dtype = torch.bfloat16 if bf16 else torch.float32
    if fp8:
        for k in [k for k in saved if k.endswith("_scale_inv")]:
            assert saved[k].dtype == torch.float32 and saved[k[:-len("_scale_inv")]].dtype == torch.float8_e4m3fn, k
            del saved[k]
    for k, t in saved.items():  # (DeepSeek-V3's router bias stays float32 in a bf16 checkpoint)
        if fp8 and t.dtype == torch.float8_e4m3fn:
            continue
        assert t.dtype == (torch.float32 if k.endswith("e_score_correction_bias") else want_dtype), (k, t.dtype)
    if is_ds:
        nb = sum(k.endswith("e_score_correction_bias") for k in saved)
        assert nb == L - config.first_k_dense_replace, nb
    if tied:
        assert "lm_head.weight" not in saved

    moe_layers = moe_layer_indices(m)
    if spec["arch"] == "qwen3_moe":
        expect = [i for i in range(L) if i not in lc.mlp_only_layers and lc.num_experts > 0
                  and (i + 1) % lc.decoder_sparse_step == 0]
        assert moe_layers == expect, (moe_layers, expect)
    if is_ds:
        assert moe_layers == list(range(lc.first_k_dense_replace, L)), moe_layers

    # DeepSeek-V3 returns no router logits: record the router's own outputs (float32 logits,
    # chosen experts) of every MoE layer for the float32 choice-robustness check below
    ds_router, capture = [], [False]
    if is_ds:
        def hook(li):
            def f(mod, inp, out):
                if capture[0]:
                    ds_router.append((li, out[0].detach(), out[2].detach()))
            return f
        for li in moe_layers:
            m.model.layers[li].mlp.gate.register_forward_hook(hook(li))

    # ---- inputs ----
    B, S = 2, 16
    input_ids = torch.randint(0, V, (B, S), generator=gen, dtype=torch.int64)
    labels = input_ids.clone()
    for b, pl in enumerate(spec["prompt_lens"]):
        labels[b, :pl] = -100
    d0, d1 = spec["doc_lens"]
    packed_ids = torch.randint(0, V, (1, d0 + d1), generator=gen, dtype=torch.int64)
    cu = torch.tensor([0, d0, d0 + d1], dtype=torch.int64)
    pos = torch.cat([torch.arange(d0), torch.arange(d1)]).unsqueeze(0).to(torch.int64)

    # ---- main forward/backward ----
    m.train()
    m.zero_grad(set_to_none=True)
    kw = dict(output_router_logits=True) if is_moe else {}
    capture[0] = True
    out = m(input_ids=input_ids, labels=labels, output_hidden_states=True, use_cache=False, **kw)
    out.loss.backward()
    logits = out.logits.detach()
    assert logits.dtype == torch.float64
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    ce = float(ce)
    loss = float(out.loss.detach())
    aux = float(out.aux_loss.detach()) if is_moe else None
    coef = lc.router_aux_loss_coef if is_moe else 0.0

    # invariants. transformers computes the loss in float32 (ForCausalLMLoss does logits.float(),
    # the aux loss is accumulated in float32): it must equal a float32 recompute closely, and the
    # float64 pieces to LOSS_TOL (a seed that misses that by float32 bad luck is skipped).
    ce32 = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    loss32 = float(ce32 + coef * out.aux_loss.detach().float()) if is_moe else float(ce32)
    assert abs(loss - loss32) < 1e-6, (loss, loss32)
    expected_loss = ce + coef * (aux or 0.0)
    if abs(loss - expected_loss) >= LOSS_TOL:
        return None, f"|loss - (ce + coef*aux)| = {abs(loss - expected_loss):.3g} >= {LOSS_TOL}"
    router_logits = {}
    if is_moe:
        rl = [t.detach() for t in out.router_logits]
        assert len(rl) == len(moe_layers), (len(rl), moe_layers)
        for li, t in zip(moe_layers, rl):
            assert t.shape == (B * S, lc.num_local_experts), t.shape
            router_logits[li] = t
        aux_ind = independent_aux_loss(rl, lc.num_local_experts, lc.num_experts_per_tok)
        assert abs(aux_ind - aux) < 1e-5, (aux_ind, aux)
    hs = [h.detach() for h in out.hidden_states]
    assert len(hs) == L + 1

    grads = hub_named_grads(m)
    assert set(grads) == set(saved), (set(grads) ^ set(saved))
    for k in grads:
        assert grads[k].shape == saved[k].shape and grads[k].dtype == torch.float64, k

    # ---- packed: each document on its own, concatenated ----
    m.eval()
    with torch.no_grad():
        per_doc, doc_router = [], []
        for a, b in ((0, d0), (d0, d0 + d1)):
            o = m(input_ids=packed_ids[:, a:b], use_cache=False, **kw)
            per_doc.append(o.logits)
            if is_moe:
                doc_router += list(o.router_logits)
        capture[0] = False
        packed_logits = torch.cat(per_doc, dim=1)
        # cross-check: one packed forward (transformers detects the packing from position_ids
        # when use_cache=False and no attention_mask) gives the same logits up to the float32
        # roundings inside transformers (eager softmax and RMSNorm run in float32, and their
        # reduction order depends on the row length), i.e. ~1e-6, not 1e-15
        o = m(input_ids=packed_ids, position_ids=pos, use_cache=False)
        packed_diff = float((o.logits - packed_logits).abs().max())
        assert packed_diff < 1e-5, packed_diff
        # roundtrip: the in-memory model (upcast) gives the same logits as the reloaded one
        mm = model.double()
        if has_experts:
            mm.set_experts_implementation("eager")
        mm.set_attn_implementation("eager")
        o = mm(input_ids=input_ids, use_cache=False)
        roundtrip = float((o.logits - logits).abs().max())
        assert roundtrip == 0.0, roundtrip

    rope_meta = {}
    if m.model.rotary_emb.rope_type != "default":
        rope_meta = rope_scaling_meta(m, model_cls, lc, input_ids, logits, has_experts, is_ds)

    prob_gap = logit_gap = None
    if is_moe:
        prob_gap, logit_gap = topk_gaps(list(router_logits.values()) + doc_router, lc.num_experts_per_tok)
        if prob_gap is not None and prob_gap < MIN_PROB_GAP:
            return None, f"router top-k probability gap {prob_gap:.3g} < {MIN_PROB_GAP}"
    ds_meta = {}
    if is_ds:
        # float32 margins of the choice over the batch and both packed documents (3 forwards x MoE
        # layers); with both >= MIN_PROB_GAP a float32 engine cannot flip a group or an expert
        assert len(ds_router) == 3 * len(moe_layers), len(ds_router)
        group_gap = choice_gap = None
        min_sel, changed, rows = None, 0, 0
        for li, lg, idx in ds_router:
            assert lg.dtype == torch.float32 and lg.shape[1] == lc.n_routed_experts, (lg.dtype, lg.shape)
            bias = m.model.layers[li].mlp.gate.e_score_correction_bias
            sel, gg, cg, ms = grouped_sigmoid_choice(lg, bias, lc.n_group, lc.topk_group, lc.num_experts_per_tok)
            group_gap, choice_gap = _min_opt(group_gap, gg), _min_opt(choice_gap, cg)
            min_sel = ms if min_sel is None else min(min_sel, ms)
            if _min_opt(gg, cg) is not None and _min_opt(gg, cg) < MIN_PROB_GAP:
                return None, f"router float32 margin (group {gg}, choice {cg}) < {MIN_PROB_GAP} in layer {li}"
            assert torch.equal(sel, idx.sort(-1).values), f"float32 choice != transformers' in layer {li}"
            sel0 = grouped_sigmoid_choice(lg, torch.zeros_like(bias), lc.n_group, lc.topk_group,
                                          lc.num_experts_per_tok)[0]
            changed += int((sel0 != sel).any(-1).sum())
            rows += lg.shape[0]
        assert changed > 0, "e_score_correction_bias changes no choice"
        prob_gap = _min_opt(group_gap, choice_gap)
        ds_meta = {
            "router_min_group_gap": group_gap, "router_min_choice_gap": choice_gap,
            "router_min_selected_choice": min_sel, "router_rows_changed_by_bias": changed,
            "router_rows": rows, "e_score_correction_bias_init": f"{BIAS_STD}*randn",
        }

    ref = {
        "input_ids": input_ids, "labels": labels, "logits": logits,
        "ce_loss": scalar(ce), "loss": scalar(loss),
        "packed.input_ids": packed_ids, "packed.cu_seqlens": cu, "packed.position_ids": pos,
        "packed.logits": packed_logits.detach().contiguous(),
    }
    if is_moe:
        ref["aux_loss"] = scalar(aux)
        for li, t in router_logits.items():
            ref[f"router_logits.{li}"] = t.contiguous()
    for i, h in enumerate(hs):
        ref[f"hidden_states.{i}"] = h.contiguous()
    for k, g in grads.items():
        ref[f"grad.{k}"] = g.contiguous()
    for k, t in ref.items():
        assert t.dtype in (torch.float64, torch.int64), (k, t.dtype)
    save_file(ref, os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})

    meta = {
        "model_class": model_cls.__name__,
        "seed": seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "variant": name,
        "weights_dtype": "bfloat16" if bf16 else "float32",
        **({"fp8_weight_block_size": list(fp8), "fp8_weights": sorted(k for k in saved if saved[k].dtype == torch.float8_e4m3fn),
            "fp8_transformers_vs_float_logits_max_abs_diff": fp8_roundtrip} if fp8 else {}),
        "roundtrip_max_abs_diff": roundtrip,
        "router_min_topk_gap": prob_gap,
        "router_min_topk_logit_gap": logit_gap,
        "loss": loss,
        "ce_loss": ce,
        "aux_loss": aux,
        "loss_minus_ce_plus_coef_aux": loss - expected_loss,
        "router_aux_loss_coef": coef if is_moe else None,
        "moe_layers": moe_layers if has_experts else [],
        "tie_word_embeddings": tied,
        "prompt_lens": list(spec["prompt_lens"]),
        "packed_doc_lens": [d0, d1],
        "packed_single_forward_max_abs_diff": packed_diff,
        "n_params": int(sum(t.numel() for t in saved.values())),
        **ds_meta,
        **rope_meta,
        "weight_names": sorted(saved),
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")

    # the shared fixtures carry no generation_config.json; keep the same file set
    gen_cfg = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)
    for f in os.listdir(out_dir):
        path = os.path.join(out_dir, f)
        os.chmod(path, 0o644)
        size = os.path.getsize(path)
        assert size < MAX_FILE_BYTES, (f, size)
    return meta, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/variants", help="output root (one dir per variant)")
    ap.add_argument("--variant", action="append", help="variant name (repeatable); default: all")
    ap.add_argument("--list", action="store_true", help="list variants and exit")
    ap.add_argument("--max-seed-tries", type=int, default=20)
    args = ap.parse_args()

    if args.list:
        for k in VARIANTS:
            print(k)
        return
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    names = args.variant or list(VARIANTS)
    for name in names:
        spec = VARIANTS[name]
        out_dir = os.path.join(args.out, name)
        seed = spec["seed"]
        for _ in range(args.max_seed_tries):
            meta, why = build(name, spec, seed, out_dir)
            if meta is not None:
                break
            print(f"{name}: seed {seed} rejected ({why}), trying seed {seed + 1}")
            seed += 1
        else:
            sys.exit(f"{name}: no acceptable seed in {args.max_seed_tries} tries")
        if seed != spec["seed"]:
            print(f"NOTE: update VARIANTS['{name}']['seed'] to {seed} to skip the retries")
        print(f"{name}: seed {seed} loss {meta['loss']:.6f} ce {meta['ce_loss']:.6f} aux {meta['aux_loss']} "
              f"gap {meta['router_min_topk_gap']} moe_layers {meta['moe_layers']} -> {out_dir}")


if __name__ == "__main__":
    main()
