#!/usr/bin/env python3
"""Reference fixtures for GPT-OSS (transformers' GptOssForCausalLM), in the format of make_reference.py.

Writes tests/data/variants/gpt_oss_tiny, gpt_oss_bf16 and gpt_oss_mxfp4 (MXFP4 below): config.json and
model.safetensors as `save_pretrained` writes them (hub names; transformers 5.17 saves the experts
FUSED: mlp.experts.gate_up_proj [E, H, 2I] with gate/up interleaved in the last dim (gate = [..., ::2],
up = [..., 1::2]), gate_up_proj_bias [E, 2I], down_proj [E, I, H], down_proj_bias [E, H]; the router
mlp.router.weight [E, H] and mlp.router.bias [E]; self_attn.sinks [Hq]; q/k/v/o_proj biases), and
reference.safetensors / meta.json exactly as make_reference.py's docstring describes (input_ids and
labels [2,16], logits, ce_loss, aux_loss, loss, grad.<hub name> for every saved tensor,
hidden_states.<i>, router_logits.<layer> [B*S, E] (the router's logits, bias included), packed.*).

The model is built from a tiny config with a fixed seed (torch.Generator; every weight random, every
bias and the sinks non-zero, norm weights 1 + 0.1*randn, the experts' gate_up_proj scaled so that
5-20% of the routed gate/up pre-activations pass transformers' clamp limit 7), saved, reloaded from
disk with attn_implementation="eager" and experts_implementation="eager" (the per-expert loop of
GptOssExperts.forward; the default would be grouped_mm), and run in float64 (`model.double()`).
Inside that model transformers still rounds through float32 in RMSNorm (hidden.to(float32)), in
RoPE's cos/sin (computed in float32, times the attention factor) and in the loss (logits.float(),
float32 aux accumulators); GPT-OSS's eager attention softmax (with the sink column) and its router
run in float64.

Checks before anything is written (an AssertionError otherwise; a seed that misses the loss or the
router-gap check is skipped for the next one, as make_reference.py does):
  * the saved tensor names, shapes and dtypes are exactly the expected hub ones (recorded in meta.json);
  * loss == ce + router_aux_loss_coef * aux within 1e-6; transformers' aux loss == a float64
    re-implementation of load_balancing_loss_func within 1e-5;
  * packed.logits (each document run alone) == one packed forward given the block-diagonal
    causal / sliding-window masks explicitly (GPT-OSS does not derive the packing from position_ids:
    its mask functions are not given them, see meta's packed_single_forward_position_ids_only_max_abs_diff);
  * an independent float64 re-implementation in plain torch (`reimpl`: RMSNorm, q/k/v/o with bias,
    YaRN/plain RoPE in the rotate_half layout from rotary_emb's inv_freq and attention_scaling, GQA
    attention with the sinks in the softmax denominator and the window i - w < j <= i on sliding
    layers, documents of a packed row masked from each other, router linear + bias, top-k of the logits
    then softmax of the k values, experts with the clamped GLU and biases, final norm, lm_head), which
    rounds through float32 exactly where transformers does, reproduces transformers' logits, hidden
    states, router logits and the packed logits within 1e-10 relative (||a-b||/||b||); its pure-float64
    variant (no float32 anywhere) and its autograd gradients are recorded (and held to 1e-5, the
    engine's tolerance);
  * the smallest gap between the k-th and (k+1)-th router logit over all layers and tokens (batch and
    both packed documents) is >= 1e-4;
  * the clamp matters: the fraction of routed gate/up pre-activations that the clamp changes is in
    [0.05, 0.20], with gate > 7, |up| > 7 and gate < -7 (not clamped) all present;
  * the sinks, the sliding window (and for YaRN its truncate flag and the scaling itself) matter:
    the logits with sinks = -inf, with every layer full attention (transformers refuses
    sliding_window = None when a layer slides), and with truncate = true differ by > 1e-3 relative;
  * the in-memory model gives the reloaded model's logits bit for bit; file sizes < 1.5 MB.

MXFP4 (gpt_oss_mxfp4, spec key mxfp4=True): the experts in the format of openai/gpt-oss-20b / -120b.
After init, every expert gate_up_proj / down_proj ([E, in, out]) is quantized to MXFP4 here
(mxfp4_quantize: per 32 values along the input dimension one E8M0 scale byte s, value 2^(s-127), with
e = ceil(log2(amax/6)); FP4 e2m1 codes = nearest of 0, .5, 1, 1.5, 2, 3, 4, 6 with bit 3 the sign, two
per byte, the LOW nibble holding the even element) and replaced by its decoding (exact in bf16); all
else is rounded to bf16. save_pretrained's BF16 model.safetensors is then rewritten in the hub layout:
model.layers.L.mlp.experts.gate_up_proj_blocks U8 [E, 2I, H/32, 16] + gate_up_proj_scales U8
[E, 2I, H/32], down_proj_blocks U8 [E, H, I/32, 16] + down_proj_scales U8 [E, H, I/32] (output-major:
the transpose of the model's [E, in, out]), the biases gate_up_proj_bias [E, 2I] / down_proj_bias [E, H]
and everything else BF16; config.json gets the hub's quantization_config {"quant_method": "mxfp4",
"modules_to_not_convert": [self_attn, mlp.router, embed_tokens, lm_head]}. The reference model is
transformers' own load of that directory with quantization_config=Mxfp4Config(dequantize=True) (eager
attention and experts, dtype float32, then .double()): its Mxfp4Dequantize converters run
integrations/mxfp4.py's convert_moe_packed_tensors (FP4 lookup, torch.ldexp by s - 127, then
transpose(1, 2): [E, R, G, 16] -> [E, G*32, R]) into the model's own parameters
model.layers.L.mlp.experts.gate_up_proj [E, H, 2I] / down_proj [E, I, H]; grad.<name> and meta's
weight_names / weight_shapes use those dequantized names. No workaround is needed on a CPU:
validate_environment returns at once when dequantize=True. Checked besides the above: the checkpoint's
exact names / shapes / dtypes; the dequantized parameters == this script's float64 decoding bit for bit;
a BF16 checkpoint of the same weights loaded by transformers has the same parameters, bit-identical
logits (batch and packed) and gradients (the "roundtrip"); a load without quantization_config gives the
same parameters; every code occurs in both nibbles. The gradients are the parameters' .grad (transformers
5.17 saves a model loaded with dequantize=True with its experts under "gate_up_proj$" / "down_proj$",
so save_pretrained cannot name them). It also writes decode.safetensors: MXFP4 test vectors (blocks U8
[3, 2, 16], scales U8 [3, 2] with 0, 1, 127, 128, 120, 254, values F32 [3, 64] = convert_moe_packed_tensors
in float32 before its transpose; all_bytes.* the same for all 256 byte values), described in meta.json's
decode_test_vectors with what scale bytes 0 and 255 give.

Usage (repo root, venv of tools/reference/README.md):
  /work/venv-ref/bin/python tools/reference/make_gpt_oss_reference.py           # all variants
  /work/venv-ref/bin/python tools/reference/make_gpt_oss_reference.py --variant gpt_oss_tiny --out DIR
"""

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile

import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402  (helpers only; make_reference.py is not modified)

REIMPL_TOL = 1e-10  # independent re-implementation vs transformers (relative)
MATTERS_TOL = 1e-3  # sinks / window / truncate must change the logits by more than this (relative)
CLAMP_RANGE = (0.05, 0.20)
LIMIT, ALPHA = 7.0, 1.702  # GptOssExperts.limit / .alpha (checked against the model)

VARIANTS = {
    # float32 checkpoint, YaRN as on the hub (theta 150000, factor 32, beta 32/1, truncate false) with a
    # small original context so that YaRN changes the frequencies at positions 0..15 and its ramp
    # has a fractional weight (where truncate false and true differ): see rope meta.
    "gpt_oss_tiny": dict(
        seed=6001,
        config=dict(
            vocab_size=256, hidden_size=48, num_hidden_layers=2,
            layer_types=["sliding_attention", "full_attention"],
            num_attention_heads=4, num_key_value_heads=2, head_dim=8,
            intermediate_size=20, num_local_experts=5, num_experts_per_tok=2,
            sliding_window=5, attention_bias=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                             "original_max_position_embeddings": 512},
            max_position_embeddings=16384, router_aux_loss_coef=0.9, rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        prompt_lens=(4, 6), doc_lens=(11, 15),
    ),
    # bf16 checkpoint, plain RoPE, MQA-like GQA 4, top-3 of 6, 3 layers with window 3 on layers 1-2.
    "gpt_oss_bf16": dict(
        seed=6101,
        bf16=True,
        config=dict(
            vocab_size=256, hidden_size=32, num_hidden_layers=3,
            layer_types=["full_attention", "sliding_attention", "sliding_attention"],
            num_attention_heads=8, num_key_value_heads=2, head_dim=6,
            intermediate_size=16, num_local_experts=6, num_experts_per_tok=3,
            sliding_window=3, attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 150000.0},
            max_position_embeddings=4096, router_aux_loss_coef=0.25, rms_norm_eps=1e-6,
            tie_word_embeddings=False,
        ),
        prompt_lens=(5, 3), doc_lens=(9, 17),
    ),
    # MXFP4 experts as openai/gpt-oss-20b/-120b ship them (see MXFP4 below): everything else BF16,
    # YaRN as on the hub (as gpt_oss_tiny), hidden and intermediate multiples of 32 (MXFP4's block).
    "gpt_oss_mxfp4": dict(
        seed=6201,
        bf16=True,
        mxfp4=True,
        config=dict(
            vocab_size=256, hidden_size=64, num_hidden_layers=2,
            layer_types=["sliding_attention", "full_attention"],
            num_attention_heads=6, num_key_value_heads=2, head_dim=8,
            intermediate_size=64, num_local_experts=4, num_experts_per_tok=2,
            sliding_window=4, attention_bias=True,
            rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                             "beta_fast": 32.0, "beta_slow": 1.0, "truncate": False,
                             "original_max_position_embeddings": 512},
            max_position_embeddings=16384, router_aux_loss_coef=0.5, rms_norm_eps=1e-5,
            tie_word_embeddings=False,
        ),
        prompt_lens=(3, 7), doc_lens=(7, 19),
    ),
}

# init scales (std of randn); fan-in of the fused experts is dim 1 ([E, H, 2I] and [E, I, H])
GATE_UP_GAIN = 5.0     # gate/up pre-activation std ~5 on the normalized input: ~10% pass |7|
DOWN_GAIN = 0.06       # the clamped GLU's outputs are ~10-50: keep the MLP output ~1
BIAS_STD = {"self_attn": 0.2, "router": 0.5, "gate_up_proj_bias": 0.5, "down_proj_bias": 0.2}


# --------------------------------------------------------------------------------------------
# MXFP4 (the hub's expert format; transformers/integrations/mxfp4.py reads it)
# --------------------------------------------------------------------------------------------

# FP4 e2m1 code -> value (bit 3 = sign); transformers' FP4_VALUES, checked against it
FP4_LUT = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]
MXFP4_BLOCK = 32  # values per E8M0 scale byte, along the input dimension
# the hub's config.json quantization_config of openai/gpt-oss-20b / -120b
MXFP4_QUANTIZATION_CONFIG = {
    "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                               "model.embed_tokens", "lm_head"],
    "quant_method": "mxfp4",
}


def mxfp4_quantize(w):
    """w [..., R, C] (float, C a multiple of 32, the input dimension) -> (blocks uint8 [..., R, C/32, 16],
    scales uint8 [..., R, C/32]), the inverse of transformers' convert_moe_packed_tensors (before its
    transpose). Per block of 32 values the exponent is e = ceil(log2(amax / 6)) (so the largest value
    maps to 3..6 and nothing overflows), scale byte = e + 127; each value is rounded to the nearest
    e2m1 magnitude of |w| / 2^e (ties to the smaller, argmin's first), sign bit 8 from w < 0 (small
    negatives give code 8, -0); two codes per byte, the LOW nibble holding the even element."""
    *pre, R, C = w.shape
    assert C % MXFP4_BLOCK == 0, w.shape
    x = w.double().reshape(*pre, R, C // MXFP4_BLOCK, MXFP4_BLOCK)
    amax = x.abs().amax(-1)
    assert bool((amax > 0).all())
    e = torch.ceil(torch.log2(amax / 6.0)).to(torch.int64)
    e = torch.where(amax / torch.pow(2.0, e.double()) > 6.0, e + 1, e)  # (log2 round-off)
    assert bool((e >= -127).all() and (e <= 127).all())
    y = x.abs() / torch.pow(2.0, e.double())[..., None]  # exact: a power of two
    mags = torch.tensor(FP4_LUT[:8], dtype=torch.float64)
    code = (y[..., None] - mags).abs().argmin(-1)
    code = code + 8 * (x < 0).to(torch.int64)
    code = code.reshape(*pre, R, C // MXFP4_BLOCK, MXFP4_BLOCK // 2, 2)
    blocks = (code[..., 0] | (code[..., 1] << 4)).to(torch.uint8)
    return blocks, (e + 127).to(torch.uint8)


def mxfp4_decode(blocks, scales):
    """float64 decoding [..., R, G, 16] x [..., R, G] -> [..., R, G*32] (no transpose): value =
    FP4_LUT[nibble] * 2^(scale - 127), the low nibble first."""
    lut = torch.tensor(FP4_LUT, dtype=torch.float64)
    b = blocks.to(torch.int64)
    v = torch.stack([lut[b & 15], lut[b >> 4]], dim=-1).flatten(-2)  # [..., R, G, 32]
    v = v * torch.pow(2.0, scales.to(torch.float64) - 127)[..., None]
    return v.flatten(-2)


def expected_mxfp4_checkpoint(c):
    """{name: (shape, dtype)} of the hub-layout MXFP4 checkpoint: the experts' gate_up_proj / down_proj
    as U8 _blocks [E, out, in/32, 16] and _scales [E, out, in/32] (output-major, the transpose of the
    model's [E, in, out]); everything else (expert biases included) BF16 under the model's names."""
    H, E, I = c.hidden_size, c.num_local_experts, c.intermediate_size
    out = {}
    for k, shape in expected_weights(c).items():
        for proj, rows, cols in (("gate_up_proj", 2 * I, H), ("down_proj", H, I)):
            if k.endswith("mlp.experts." + proj):
                out[k + "_blocks"] = ([E, rows, cols // MXFP4_BLOCK, 16], torch.uint8)
                out[k + "_scales"] = ([E, rows, cols // MXFP4_BLOCK], torch.uint8)
                break
        else:
            out[k] = (shape, torch.bfloat16)
    return out


@torch.no_grad()
def mxfp4_quantize_experts(model):
    """Replace every expert gate_up_proj / down_proj ([E, in, out]) by its MXFP4 decoding, in place;
    returns {param name: (blocks, scales)} in the checkpoint layout (output-major)."""
    q = {}
    for name, p in model.named_parameters():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            blocks, scales = mxfp4_quantize(p.transpose(1, 2))
            dec = mxfp4_decode(blocks, scales).transpose(1, 2)
            assert torch.equal(dec.to(torch.bfloat16).double(), dec), name  # exact in bf16 (and float32)
            p.copy_(dec)
            q[name] = (blocks, scales)
    return q


def write_mxfp4_checkpoint(out_dir, quantized, cfg_json):
    """Rewrite save_pretrained's bf16 model.safetensors in the hub's MXFP4 layout (experts' fused
    weights -> U8 _blocks / _scales) and add the hub's quantization_config to cfg_json."""
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    for name, (blocks, scales) in quantized.items():
        stored = tensors.pop(name)
        # the bf16 tensor save_pretrained wrote is exactly the decoding
        assert torch.equal(stored.double(), mxfp4_decode(blocks, scales).transpose(1, 2)), name
        tensors[name + "_blocks"] = blocks.contiguous()
        tensors[name + "_scales"] = scales.contiguous()
    save_file(tensors, path, metadata={"format": "pt"})
    cfg_json["quantization_config"] = dict(MXFP4_QUANTIZATION_CONFIG)
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(json.dumps(cfg_json, indent=2, sort_keys=True) + "\n")  # as save_pretrained writes it


def load_mxfp4_reference(model_cls, path):
    """transformers' own load of the MXFP4 directory, dequantized (Mxfp4Config(dequantize=True)),
    eager attention and experts, then float64. Returns (model, {dequantized name: dtype on load})."""
    from transformers import Mxfp4Config
    m = model_cls.from_pretrained(path, quantization_config=Mxfp4Config(dequantize=True), dtype=torch.float32,
                                  attn_implementation="eager", experts_implementation="eager")
    # dequantize=True drops the quantizer after loading: a plain GptOssForCausalLM with GptOssExperts
    assert not getattr(m, "is_quantized", False) and not hasattr(m.config, "quantization_config")
    assert type(m.model.layers[0].mlp.experts).__name__ == "GptOssExperts"
    dtypes = {k: str(p.dtype).replace("torch.", "") for k, p in m.named_parameters() if "mlp.experts." in k}
    return m.double(), dtypes


def write_decode_vectors(out_dir):
    """decode.safetensors: standalone MXFP4 test vectors, decoded by transformers' own
    convert_moe_packed_tensors in float32. Returns the meta entry."""
    from transformers.integrations.mxfp4 import FP4_VALUES, convert_moe_packed_tensors
    assert [float(v) for v in FP4_VALUES] == FP4_LUT
    assert [math_signbit(v) for v in FP4_VALUES] == [i >= 8 for i in range(16)]

    def hf(blocks, scales):
        # convert_moe_packed_tensors needs [E, R, G, 16] (it ends with transpose(1, 2): [E, G*32, R]);
        # give it a leading E = 1 and undo its transpose: [R, G*32]
        out = convert_moe_packed_tensors(blocks[None], scales[None], dtype=torch.float32)
        assert out.shape == (1, blocks.shape[-2] * 32, blocks.shape[0]), out.shape
        v = out[0].transpose(0, 1).contiguous()
        # the same through R = 1 per row: [R, 1, G, 16] -> [R, G*32, 1]
        alt = convert_moe_packed_tensors(blocks[:, None], scales[:, None], dtype=torch.float32)
        assert torch.equal(alt[..., 0], v) or bool(torch.isnan(v).any())
        return v

    # 6 blocks of 16 bytes: in each block every low nibble and every high nibble once; the high nibble
    # is the low one plus a per-block offset (0: 0x00, 0x88, 0xFF; 8: 0x80, 0x08), so 96 distinct bytes
    offs = [0, 8, 1, 15, 5, 11]
    blocks = torch.zeros(6, 16, dtype=torch.uint8)
    for n, o in enumerate(offs):
        for j in range(16):
            lo = (7 * j + 3 * n) % 16
            blocks[n, j] = lo | (((lo + o) % 16) << 4)
    assert len(set(blocks.flatten().tolist())) == 96
    for n in range(6):
        assert sorted((blocks[n] & 15).tolist()) == list(range(16)) == sorted((blocks[n] >> 4).tolist())
    blocks = blocks.reshape(3, 2, 16)
    scales = torch.tensor([[0, 1], [127, 128], [120, 254]], dtype=torch.uint8)
    values = hf(blocks, scales)
    assert values.shape == (3, 64) and values.dtype == torch.float32
    own = mxfp4_decode(blocks, scales).to(torch.float32)  # float64 decoding, then to float32
    assert torch.equal(own, values)  # incl. the infinities of scale 254 (2 * 2^127 overflows float32)
    assert not bool(torch.isnan(values).any())
    # every byte value once: [8, 2, 16] (block n holds bytes 32n .. 32n+31), scales around 127
    all_blocks = torch.arange(256, dtype=torch.int64).to(torch.uint8).reshape(8, 2, 16)
    all_scales = torch.tensor([[127, 126], [128, 119], [133, 120], [100, 140],
                               [127, 127], [2, 250], [125, 129], [64, 190]], dtype=torch.uint8)
    all_values = hf(all_blocks, all_scales)
    assert torch.equal(mxfp4_decode(all_blocks, all_scales).to(torch.float32), all_values)
    save_file({"blocks": blocks, "scales": scales, "values": values,
               "all_bytes.blocks": all_blocks, "all_bytes.scales": all_scales, "all_bytes.values": all_values},
              os.path.join(out_dir, "decode.safetensors"), metadata={"format": "pt"})

    # scale bytes 0 and 255 on the 16 codes (byte c | c << 4: both nibbles the same code)
    codes = torch.arange(16, dtype=torch.uint8)
    one = (codes | (codes << 4)).repeat(2).reshape(1, 2, 16)  # 2 groups: scale 0, then 255

    def show(t):
        return [repr(float(x)) if not torch.isfinite(x) else float(x) for x in t]

    ext = {}
    for dt in (torch.float32, torch.bfloat16):
        out = convert_moe_packed_tensors(one[None], torch.tensor([[[0, 255]]], dtype=torch.uint8), dtype=dt)
        v = out[0, :, 0]  # [64]: even elements = low nibbles
        ext[str(dt).replace("torch.", "")] = {"scale_0": show(v[0:32:2].float()), "scale_255": show(v[32:64:2].float())}
    f32 = ext["float32"]
    assert f32["scale_0"] == [float(x) * 2.0 ** -127 for x in FP4_LUT]
    # torch.ldexp is an exact v * 2^e, rounded once: 0.5 * 2^128 = 2^127 stays finite, 0 * 2^128 = 0
    assert f32["scale_255"] == [0.0, 2.0 ** 127] + ["inf"] * 6 + [-0.0, -2.0 ** 127] + ["-inf"] * 6
    assert ext["bfloat16"] == f32
    n_inf = int(torch.isinf(values).sum())
    return {
        "file": "decode.safetensors",
        "blocks": "U8 [3, 2, 16] ([rows, groups, 16 bytes]); 96 distinct byte values (96 bytes cannot hold all "
                  "256): each of the 6 blocks has every low nibble and every high nibble once (incl. bytes "
                  "0x00, 0x08, 0x80, 0x88, 0xFF)",
        "scales": scales.tolist(),
        "values": "F32 [3, 64] = transformers' convert_moe_packed_tensors(blocks, scales, dtype=torch.float32) "
                  "BEFORE its transpose: row r = block (r, 0) then block (r, 1), 32 values each, element 2j = "
                  "low nibble of byte j, 2j+1 = high nibble",
        "all_bytes": "all_bytes.blocks U8 [8, 2, 16] = bytes 0..255 in order, all_bytes.scales U8 [8, 2] = "
                     + str(all_scales.tolist()) + ", all_bytes.values F32 [8, 64], made the same way",
        "convert_moe_packed_tensors": "takes blocks [E, R, G, 16] and scales [E, R, G] (needs 4-D blocks: it "
                                      "ends with out.transpose(1, 2)); decodes to [E, R, G*32] and returns that "
                                      "transposed to [E, G*32, R] (contiguous): gate_up_proj_blocks [E, 2I, H/32, 16] "
                                      "-> gate_up_proj [E, H, 2I], down_proj_blocks [E, H, I/32, 16] -> down_proj "
                                      "[E, I, H]. These vectors were decoded with a leading E = 1 and transposed back",
        "arithmetic": "lut[nibble] (FP4_VALUES in dtype) then torch.ldexp(v, scale - 127) in place; on this CPU "
                      "torch.ldexp is an exact v * 2^(scale-127) rounded once to dtype (no separate 2^e that could "
                      "overflow: 0.5 * 2^128 = 2^127), i.e. the float64 decoding rounded to dtype (checked: "
                      "values == float64 decoding .to(float32) bit for bit). The model load uses dtype bfloat16",
        "scale_254": f"2^127: codes +-0.5, 1, 1.5 give +-2^126, 2^127, 1.5*2^127; +-2, 3, 4, 6 overflow float32 to "
                     f"+-inf (values has {n_inf} infinities, all in block (2, 1))",
        "scale_0": "2^-127: values +-2^-128 .. +-1.5*2^-125, float32 subnormals, exact; an engine that flushes "
                   "subnormals to zero gives 0",
        "scale_255": "no special case in transformers (OCP MX calls E8M0 0xFF NaN): 2^128 times the code, i.e. "
                     "+-0 -> +-0, +-0.5 -> +-2^127 (finite), +-1 .. +-6 -> +-inf; no NaN (the same in bfloat16)",
        "scale_0_and_255_by_code": ext,
        "fp4_lut": FP4_LUT,
    }


def math_signbit(x):
    return bool(torch.signbit(torch.tensor(float(x))))


def mxfp4_meta(c, ckpt, quantized, load_dtypes, roundtrip, auto_same):
    """meta.json's "mxfp4" entry (and its checks: every code in both nibbles, scale bytes away from 127)."""
    lo = torch.zeros(16, dtype=torch.int64)
    hi = torch.zeros(16, dtype=torch.int64)
    scale_range = {}
    for name, (blocks, scales) in sorted(quantized.items()):
        lo += torch.bincount((blocks & 15).flatten().long(), minlength=16)
        hi += torch.bincount((blocks >> 4).flatten().long(), minlength=16)
        proj = name.rsplit(".", 1)[1]
        s = scale_range.setdefault(proj, [255, 0])
        s[0], s[1] = min(s[0], int(scales.min())), max(s[1], int(scales.max()))
    assert bool((lo > 0).all() and (hi > 0).all()), (lo, hi)
    all_scales = torch.cat([s.flatten() for _, s in quantized.values()]).long()
    assert int((all_scales - 127).abs().max()) >= 6, scale_range
    hist = torch.bincount(all_scales, minlength=256)
    H, E, I = c.hidden_size, c.num_local_experts, c.intermediate_size
    return {
        "quantization_config": MXFP4_QUANTIZATION_CONFIG,
        "checkpoint_tensors": {k: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
                               for k, t in sorted(ckpt.items())},
        "dequantized_experts": {
            "gate_up_proj": [E, H, 2 * I], "down_proj": [E, I, H],
            "names": "the model's own parameter names, as in the other variants: model.layers.L.mlp.experts."
                     "gate_up_proj / down_proj (no _blocks / _scales); grad.<name> under those names",
            "dtype_after_load": load_dtypes,
            "note": "from_pretrained(dtype=float32) leaves the dequantized experts in bfloat16 "
                    "(convert_moe_packed_tensors' default dtype; the loader does not cast converted tensors), "
                    "all else float32; exact either way, then .double()",
        },
        "convert_moe_packed_tensors_transposes": "yes: [E, R, G, 16] -> [E, R, G*32] -> transpose(1, 2) -> "
                                                 "[E, G*32, R] (gate_up [E, 2I, H/32, 16] -> [E, H, 2I], down "
                                                 "[E, H, I/32, 16] -> [E, I, H]); gate/up stay interleaved "
                                                 "(rows 2j gate, 2j+1 up of the blocks)",
        "fp4_lut": FP4_LUT,
        "quantization": "per 32 values along the input dim: e = ceil(log2(amax/6)), scale byte e+127, codes = "
                        "nearest e2m1 magnitude of |w|/2^e with the sign bit from w < 0 (tiny negatives -> code "
                        "8, -0); low nibble = even element. Weights drawn as in the other variants first",
        "scale_byte_range": scale_range,
        "scale_byte_histogram": {str(i): int(n) for i, n in enumerate(hist) if n},
        "code_counts_low_nibble": lo.tolist(),
        "code_counts_high_nibble": hi.tolist(),
        "dequantized_equals_own_float64_decoding": True,
        "transformers_mxfp4_vs_bf16_checkpoint_logits_max_abs_diff": roundtrip,
        "load_without_quantization_config_gives_same_parameters": auto_same,
        "cpu_loading": "no workaround needed: Mxfp4HfQuantizer.validate_environment returns right away when "
                       "dequantize=True (accelerate / triton / kernels are only checked otherwise), "
                       "replace_with_mxfp4_linear returns the model unchanged, and the weight converters "
                       "Mxfp4Dequantize(gate_up_proj_blocks + _scales -> gate_up_proj, down_proj_* -> down_proj) "
                       "call convert_moe_packed_tensors(blocks, scales) (dtype bfloat16); after loading the "
                       "quantizer and config.quantization_config are removed",
    }


# --------------------------------------------------------------------------------------------
# Init
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def init_weights(model, gen):
    """Every parameter from `gen`, in sorted-name order; no parameter is left as transformers' init."""
    H = model.config.hidden_size
    for name, p in sorted(model.named_parameters()):
        shape = tuple(p.shape)

        def randn():
            return torch.randn(*shape, generator=gen, dtype=torch.float32)

        if name.endswith("norm.weight"):
            v = 1.0 + 0.1 * randn()
        elif name == "model.embed_tokens.weight":
            v = randn()
        elif name == "lm_head.weight":
            v = randn() / H ** 0.5
        elif name.endswith("self_attn.sinks"):
            v = randn()  # N(0,1): comparable to the attention logits, so they matter
        elif name.endswith("mlp.router.weight"):
            v = 2.0 * randn() / H ** 0.5
        elif name.endswith("mlp.router.bias"):
            v = BIAS_STD["router"] * randn()
        elif name.endswith("experts.gate_up_proj"):  # [E, H, 2I]
            v = GATE_UP_GAIN * randn() / shape[1] ** 0.5
        elif name.endswith("experts.gate_up_proj_bias"):
            v = BIAS_STD["gate_up_proj_bias"] * randn()
        elif name.endswith("experts.down_proj"):  # [E, I, H]
            v = DOWN_GAIN * randn() / shape[1] ** 0.5
        elif name.endswith("experts.down_proj_bias"):
            v = BIAS_STD["down_proj_bias"] * randn()
        elif "self_attn." in name and name.endswith(".weight"):  # nn.Linear [out, in]
            gain = 0.5 if name.endswith("o_proj.weight") else 1.0
            v = gain * randn() / shape[1] ** 0.5
        elif "self_attn." in name and name.endswith(".bias"):
            v = BIAS_STD["self_attn"] * randn()
        else:
            raise RuntimeError(f"no init rule for {name} {shape}")
        p.copy_(v)
        assert bool((p != 0).all()), name


def expected_weights(c):
    """{hub name: shape} that save_pretrained must write (transformers 5.17, fused experts)."""
    H, E, I, D = c.hidden_size, c.num_local_experts, c.intermediate_size, c.head_dim
    Hq, Hkv = c.num_attention_heads, c.num_key_value_heads
    out = {"model.embed_tokens.weight": [c.vocab_size, H], "lm_head.weight": [c.vocab_size, H],
           "model.norm.weight": [H]}
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        out.update({
            p + "input_layernorm.weight": [H], p + "post_attention_layernorm.weight": [H],
            p + "self_attn.q_proj.weight": [Hq * D, H], p + "self_attn.q_proj.bias": [Hq * D],
            p + "self_attn.k_proj.weight": [Hkv * D, H], p + "self_attn.k_proj.bias": [Hkv * D],
            p + "self_attn.v_proj.weight": [Hkv * D, H], p + "self_attn.v_proj.bias": [Hkv * D],
            p + "self_attn.o_proj.weight": [H, Hq * D], p + "self_attn.o_proj.bias": [H],
            p + "self_attn.sinks": [Hq],
            p + "mlp.router.weight": [E, H], p + "mlp.router.bias": [E],
            p + "mlp.experts.gate_up_proj": [E, H, 2 * I], p + "mlp.experts.gate_up_proj_bias": [E, 2 * I],
            p + "mlp.experts.down_proj": [E, I, H], p + "mlp.experts.down_proj_bias": [E, H],
        })
    return out


# --------------------------------------------------------------------------------------------
# Independent re-implementation (plain torch, no transformers module)
# --------------------------------------------------------------------------------------------


def reimpl(W, c, inv_freq, att_scale, input_ids, position_ids, doc_ids, as_hf=True, stats=None):
    """GPT-OSS forward from the hub-named weights W (float64 tensors). input_ids/position_ids/doc_ids
    [B, S]; tokens of different doc_ids do not see each other. as_hf=True rounds through float32
    where transformers does (RMSNorm's normalization, RoPE's angle, cos/sin and their factor);
    as_hf=False is float64 throughout. Returns (logits, hidden_states list (L+1, the last one after
    the final norm, as transformers returns them), router logits per layer [B*S, E]).
    stats (a list) collects every routed (token, expert) gate/up pre-activation pair."""
    B, S = input_ids.shape
    H, D = c.hidden_size, c.head_dim
    Hq, Hkv = c.num_attention_heads, c.num_key_value_heads
    k, eps = c.num_experts_per_tok, c.rms_norm_eps

    def rms(x, w):
        if as_hf:
            x32 = x.to(torch.float32)
            y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
            return w * y  # float64 weight times the float32 normalization (-> float64)
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))

    # RoPE: angle_i = pos * inv_freq_i, cos/sin times the attention factor, rotate_half layout
    if as_hf:
        ang = position_ids.to(torch.float32)[..., None] * inv_freq.to(torch.float32)
        cos = (torch.cos(ang) * att_scale).double()
        sin = (torch.sin(ang) * att_scale).double()
    else:
        ang = position_ids.double()[..., None] * inv_freq.double()
        cos, sin = torch.cos(ang) * att_scale, torch.sin(ang) * att_scale
    cos, sin = cos[:, None], sin[:, None]  # [B, 1, S, D/2]

    def rope(x):  # [B, h, S, D]
        x1, x2 = x[..., : D // 2], x[..., D // 2:]
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    qi = torch.arange(S)[:, None]
    kj = torch.arange(S)[None, :]
    same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, S, S]
    causal = (kj <= qi)[None] & same_doc

    x = W["model.embed_tokens.weight"][input_ids]
    hs, router = [x], []
    for l in range(c.num_hidden_layers):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"])
        q = (h @ W[p + "self_attn.q_proj.weight"].T + W[p + "self_attn.q_proj.bias"]).view(B, S, Hq, D).transpose(1, 2)
        kk = (h @ W[p + "self_attn.k_proj.weight"].T + W[p + "self_attn.k_proj.bias"]).view(B, S, Hkv, D).transpose(1, 2)
        v = (h @ W[p + "self_attn.v_proj.weight"].T + W[p + "self_attn.v_proj.bias"]).view(B, S, Hkv, D).transpose(1, 2)
        q, kk = rope(q), rope(kk)
        g = Hq // Hkv
        kk = kk[:, torch.arange(Hq) // g]  # query head h reads kv head h // (Hq/Hkv)
        v = v[:, torch.arange(Hq) // g]
        allowed = causal
        if c.layer_types[l] == "sliding_attention":
            allowed = allowed & (kj > qi - c.sliding_window)[None]  # i - window < j <= i
        s = (q @ kk.transpose(-1, -2)) * D ** -0.5
        s = s.masked_fill(~allowed[:, None], float("-inf"))
        sink = W[p + "self_attn.sinks"].view(1, Hq, 1, 1).expand(B, Hq, S, 1)
        z = torch.cat([s, sink], dim=-1)
        z = z - z.max(dim=-1, keepdim=True).values
        e = torch.exp(z)
        prob = e[..., :-1] / e.sum(-1, keepdim=True)  # the sink only in the denominator
        a = (prob @ v).transpose(1, 2).reshape(B, S, Hq * D)
        x = x + a @ W[p + "self_attn.o_proj.weight"].T + W[p + "self_attn.o_proj.bias"]

        h = rms(x, W[p + "post_attention_layernorm.weight"]).reshape(B * S, H)
        rl = h @ W[p + "mlp.router.weight"].T + W[p + "mlp.router.bias"]
        router.append(rl)
        top_v, top_i = torch.topk(rl, k, dim=-1)
        wts = torch.softmax(top_v, dim=-1)
        out = torch.zeros_like(h)
        for t in range(B * S):
            for j in range(k):
                ex = int(top_i[t, j])
                gu = h[t] @ W[p + "mlp.experts.gate_up_proj"][ex] + W[p + "mlp.experts.gate_up_proj_bias"][ex]
                gate, up = gu[0::2], gu[1::2]
                if stats is not None:
                    stats.append((gate.detach(), up.detach()))
                gate = gate.clamp(max=LIMIT)
                up = up.clamp(-LIMIT, LIMIT)
                act = (up + 1) * gate * torch.sigmoid(ALPHA * gate)
                y = act @ W[p + "mlp.experts.down_proj"][ex] + W[p + "mlp.experts.down_proj_bias"][ex]
                out[t] = out[t] + wts[t, j] * y
        x = x + out.view(B, S, H)
        hs.append(x)
    x = rms(x, W["model.norm.weight"])
    hs[-1] = x
    return x @ W["lm_head.weight"].T, hs, router


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def reimpl_loss(logits, labels, router, c):
    """float64 CE after the shift + coef * Switch aux loss (softmax over all logits, top-k)."""
    V = logits.shape[-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    E, k = c.num_local_experts, c.num_experts_per_tok
    f = torch.zeros(E, dtype=torch.float64)
    pr = torch.zeros(E, dtype=torch.float64)
    rows = 0
    for rl in router:
        probs = torch.softmax(rl, dim=-1)
        sel = torch.topk(probs, k, dim=-1).indices
        f = f + torch.bincount(sel.reshape(-1), minlength=E).double()
        pr = pr + probs.sum(0)
        rows += rl.shape[0]
    aux = E * torch.sum((f / rows) * (pr / rows))
    return ce + c.router_aux_loss_coef * aux


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def fresh_model(cfg, state_dict):
    """An eager float64 GptOssForCausalLM for cfg carrying state_dict."""
    m = transformers.GptOssForCausalLM(cfg).double()
    m.load_state_dict(state_dict)
    m.set_attn_implementation("eager")
    m.set_experts_implementation("eager")
    return m.eval()


def block_masks(doc_lens, window, dtype):
    """The explicit additive [1, 1, N, N] masks of a packed row: causal within each document, and
    for sliding layers also i - window < j <= i (positions restart per document)."""
    n = sum(doc_lens)
    doc = torch.cat([torch.full((d,), i) for i, d in enumerate(doc_lens)])
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    full = (j <= i) & (doc[:, None] == doc[None, :])
    sliding = full & (j > i - window)
    neg = torch.finfo(dtype).min

    def add(allowed):
        return torch.zeros(n, n, dtype=dtype).masked_fill(~allowed, neg)[None, None]

    return {"full_attention": add(full), "sliding_attention": add(sliding)}


# --------------------------------------------------------------------------------------------
# One variant
# --------------------------------------------------------------------------------------------


def build(name, spec, seed, out_dir):
    model_cls = transformers.GptOssForCausalLM
    bf16 = spec.get("bf16", False)
    mx = spec.get("mxfp4", False)
    assert bf16 or not mx
    config = transformers.GptOssConfig(**spec["config"], output_router_logits=True)
    V, L, E, K = config.vocab_size, config.num_hidden_layers, config.num_local_experts, config.num_experts_per_tok
    assert config.head_dim != config.hidden_size // config.num_attention_heads
    sliding_layers = [i for i, t in enumerate(config.layer_types) if t == "sliding_attention"]
    assert sliding_layers and len(sliding_layers) < L, config.layer_types
    assert min(spec["doc_lens"]) > config.sliding_window and 16 > config.sliding_window

    torch.manual_seed(seed)
    model = model_cls(config)
    gen = torch.Generator().manual_seed(seed)
    init_weights(model, gen)
    e0 = model.model.layers[0].mlp.experts
    assert (e0.limit, e0.alpha) == (LIMIT, ALPHA), (e0.limit, e0.alpha)
    if mx:  # the experts become their MXFP4 decoding (exact in bf16), the rest is rounded to bf16 below
        quantized = mxfp4_quantize_experts(model)
    save_model = model
    if bf16:  # as make_reference.py: round in place (float32 copy kept), save a bf16 copy
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        save_model = copy.deepcopy(model).to(torch.bfloat16)
        save_model.config.dtype = torch.bfloat16

    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    save_model.save_pretrained(out_dir)
    with open(os.path.join(out_dir, "config.json")) as f:
        cfg_json = json.load(f)
    if mx:
        # the same weights as a plain BF16 checkpoint (for the roundtrip), then the hub's MXFP4 layout
        plain_dir = tempfile.mkdtemp(prefix="gpt_oss_plain_")
        shutil.copytree(out_dir, plain_dir, dirs_exist_ok=True)
        write_mxfp4_checkpoint(out_dir, quantized, cfg_json)

    # ---- reload from disk, eager attention, eager (per-expert loop) experts, float64 ----
    if mx:  # transformers' own MXFP4 load, dequantized
        m, mx_load_dtypes = load_mxfp4_reference(model_cls, out_dir)
        m_plain = mr.load_reference_model(model_cls, plain_dir)  # the BF16 checkpoint, for the roundtrip
        shutil.rmtree(plain_dir)
    else:
        m = mr.load_reference_model(model_cls, out_dir)
    lc = m.config
    assert lc._attn_implementation == "eager" and lc._experts_implementation == "eager"
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "intermediate_size", "num_local_experts", "num_experts_per_tok", "sliding_window",
                "layer_types", "router_aux_loss_coef", "rms_norm_eps", "attention_bias", "tie_word_embeddings"):
        assert getattr(lc, key) == getattr(config, key), key
    assert mr.rope_semantics(lc.rope_parameters) == mr.rope_semantics(config.rope_parameters)
    for layer, t in zip(m.model.layers, lc.layer_types):
        assert layer.self_attn.sliding_window == (lc.sliding_window if t == "sliding_attention" else None)
        assert layer.self_attn.scaling == lc.head_dim ** -0.5

    saved = mr.read_saved_weights(out_dir)
    if mx:
        # the checkpoint holds exactly the hub's MXFP4 names, shapes and dtypes ...
        ckpt = saved
        want_ckpt = expected_mxfp4_checkpoint(lc)
        assert set(ckpt) == set(want_ckpt), set(ckpt) ^ set(want_ckpt)
        for k_, (shape, dt) in want_ckpt.items():
            assert list(ckpt[k_].shape) == shape and ckpt[k_].dtype == dt, (k_, ckpt[k_].shape, ckpt[k_].dtype)
        for k_, (blocks, scales) in quantized.items():
            assert torch.equal(ckpt[k_ + "_blocks"], blocks) and torch.equal(ckpt[k_ + "_scales"], scales), k_
        # ... and the model's weights are the dequantized ones under the model's (fused) names: the
        # experts decoded here in float64 (exact in bf16), the rest as stored
        saved = {}
        for k_, t in ckpt.items():
            if k_.endswith("_blocks"):
                base = k_[: -len("_blocks")]
                dec = mxfp4_decode(t, ckpt[base + "_scales"]).transpose(1, 2).contiguous()
                saved[base] = dec.to(torch.bfloat16)
                assert torch.equal(saved[base].double(), dec), base
            elif not k_.endswith("_scales"):
                saved[k_] = t
        assert set(m.state_dict()) == set(saved), set(m.state_dict()) ^ set(saved)
    want = expected_weights(lc)
    assert {k: list(v.shape) for k, v in saved.items()} == want, set(saved) ^ set(want)
    want_dtype = torch.bfloat16 if bf16 else torch.float32
    for k_, t in saved.items():
        assert t.dtype == want_dtype, (k_, t.dtype)
    W = {k_: t.double() for k_, t in saved.items()}
    # the model holds exactly the saved values, fused layout untouched (gate = [..., ::2])
    for k_, p in m.named_parameters():
        assert torch.equal(p.detach(), W[k_]), k_

    # ---- inputs (as make_reference.py) ----
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
    out = m(input_ids=input_ids, labels=labels, output_hidden_states=True, output_router_logits=True,
            use_cache=False)
    out.loss.backward()
    logits = out.logits.detach()
    assert logits.dtype == torch.float64
    ce = float(F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100))
    loss, aux, coef = float(out.loss.detach()), float(out.aux_loss.detach()), lc.router_aux_loss_coef
    ce32 = F.cross_entropy(logits[:, :-1].float().reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    assert abs(loss - float(ce32 + coef * out.aux_loss.detach().float())) < 1e-6
    expected_loss = ce + coef * aux
    if abs(loss - expected_loss) >= mr.LOSS_TOL:
        return None, f"|loss - (ce + coef*aux)| = {abs(loss - expected_loss):.3g} >= {mr.LOSS_TOL}"
    rl = [t.detach() for t in out.router_logits]
    assert len(rl) == L and all(t.shape == (B * S, E) and t.dtype == torch.float64 for t in rl)
    aux_ind = mr.independent_aux_loss(rl, E, K)
    assert abs(aux_ind - aux) < 1e-5, (aux_ind, aux)
    hs = [h.detach() for h in out.hidden_states]
    assert len(hs) == L + 1
    if mx:
        # the gradients under the dequantized model's own parameter names. Not via save_pretrained
        # (hub_named_grads): transformers 5.17 saves a model loaded with Mxfp4Config(dequantize=True)
        # with its experts under the converter's target patterns "gate_up_proj$" / "down_proj$" (one
        # tensor each for all layers); the BF16 roundtrip model below checks these names and values
        grads = {k_: p.grad.detach().clone() for k_, p in m.named_parameters()}
        resaved = mr.hub_named_grads(m)
        mx_resave_names = sorted(set(resaved) - set(saved))
        assert mx_resave_names == ["down_proj$", "gate_up_proj$"], mx_resave_names
        for k_ in set(resaved) & set(saved):
            assert torch.equal(resaved[k_], grads[k_]), k_
    else:
        grads = mr.hub_named_grads(m)
    assert set(grads) == set(saved), set(grads) ^ set(saved)
    for k_ in grads:
        assert grads[k_].shape == saved[k_].shape and grads[k_].dtype == torch.float64, k_
        assert float(grads[k_].abs().max()) > 0, f"zero gradient {k_}"

    # ---- packed: each document alone, concatenated ----
    m.eval()
    with torch.no_grad():
        per_doc, doc_router = [], []
        for a, b in ((0, d0), (d0, d0 + d1)):
            o = m(input_ids=packed_ids[:, a:b], use_cache=False, output_router_logits=True)
            per_doc.append(o.logits)
            doc_router += list(o.router_logits)
        packed_logits = torch.cat(per_doc, dim=1)
        # one packed forward with the block-diagonal masks given explicitly (a dict by layer type)
        o = m(input_ids=packed_ids, position_ids=pos, use_cache=False, output_router_logits=False,
              attention_mask=block_masks((d0, d1), lc.sliding_window, torch.float64))
        packed_diff = float((o.logits - packed_logits).abs().max())
        assert packed_diff < 1e-12, packed_diff
        # position_ids alone: GPT-OSS does not pass them to its mask functions, so the documents
        # see each other (recorded; Qwen3/Mixtral detect the packing from position_ids)
        o = m(input_ids=packed_ids, position_ids=pos, use_cache=False)
        packed_pos_only = float((o.logits - packed_logits).abs().max())
        # roundtrip: the in-memory model (upcast) gives the reloaded one's logits
        mm = model.double()
        mm.set_experts_implementation("eager")
        mm.set_attn_implementation("eager")
        roundtrip = float((mm(input_ids=input_ids, use_cache=False).logits - logits).abs().max())
        assert roundtrip == 0.0, roundtrip
        if mx:
            # a plain BF16 checkpoint of the same (dequantized) weights, loaded by transformers: the same
            # parameters and bit-identical logits (batch and packed documents)
            for (k_, a), (k2, b) in zip(m.named_parameters(), m_plain.named_parameters()):
                assert k_ == k2 and torch.equal(a, b), k_
            mx_roundtrip = max(
                float((m_plain(input_ids=input_ids, use_cache=False).logits - logits).abs().max()),
                max(float((m_plain(input_ids=packed_ids[:, a:b], use_cache=False).logits - pl).abs().max())
                    for (a, b), pl in zip(((0, d0), (d0, d0 + d1)), per_doc)))
            assert mx_roundtrip == 0.0, mx_roundtrip
            # ... and the same gradients, saved by save_pretrained under the same names
            with torch.enable_grad():
                m_plain.train()
                o = m_plain(input_ids=input_ids, labels=labels, output_router_logits=True, use_cache=False)
                o.loss.backward()
            plain_grads = mr.hub_named_grads(m_plain)
            assert set(plain_grads) == set(grads), set(plain_grads) ^ set(grads)
            for k_ in grads:
                assert torch.equal(plain_grads[k_], grads[k_]), k_
            # a load without quantization_config dequantizes as well on this CPU (no `kernels` package;
            # on a CPU transformers also dequantizes unless use_kernels=True): the same parameters
            m_auto = mr.load_reference_model(model_cls, out_dir)
            mx_auto_same = all(torch.equal(a, b) for a, b in zip(m.parameters(), m_auto.parameters()))
            assert mx_auto_same

    # ---- router margin (GPT-OSS takes the top-k of the logits, bias included) ----
    prob_gap, logit_gap = mr.topk_gaps(rl + doc_router, K)
    if logit_gap < mr.MIN_PROB_GAP:
        return None, f"router top-k logit gap {logit_gap:.3g} < {mr.MIN_PROB_GAP}"
    # the router bias changes some choices
    changed = 0
    for li, t in enumerate(rl):
        b = m.model.layers[li].mlp.router.bias.detach()
        changed += int((torch.topk(t, K).indices.sort(-1).values != torch.topk(t - b, K).indices.sort(-1).values)
                       .any(-1).sum())
    assert changed > 0

    # ---- independent re-implementation ----
    rot = m.model.rotary_emb
    inv_freq, att_scale = rot.inv_freq.detach(), rot.attention_scaling
    row_doc = torch.zeros(B, S, dtype=torch.int64)
    row_pos = torch.arange(S).unsqueeze(0).expand(B, S)
    stats = []
    with torch.no_grad():
        r_logits, r_hs, r_rl = reimpl(W, lc, inv_freq, att_scale, input_ids, row_pos, row_doc, stats=stats)
        packed_doc = torch.cat([torch.zeros(d0), torch.ones(d1)]).long().unsqueeze(0)
        rp_logits, _, _ = reimpl(W, lc, inv_freq, att_scale, packed_ids, pos, packed_doc)
        f64_logits, _, _ = reimpl(W, lc, inv_freq, att_scale, input_ids, row_pos, row_doc, as_hf=False)
        f64_packed, _, _ = reimpl(W, lc, inv_freq, att_scale, packed_ids, pos, packed_doc, as_hf=False)
    reimpl_meta = {
        "logits": rel(r_logits, logits),
        "hidden_states": max(rel(a, b) for a, b in zip(r_hs, hs)),
        "router_logits": max(rel(a, b) for a, b in zip(r_rl, rl)),
        "packed_logits": rel(rp_logits, packed_logits),
    }
    for k_, v in reimpl_meta.items():
        assert v < REIMPL_TOL, (k_, v)
    pure = {"logits": rel(f64_logits, logits), "packed_logits": rel(f64_packed, packed_logits)}
    assert max(pure.values()) < 1e-5, pure
    # gradients of the re-implementation (float64 loss; transformers' loss is float32)
    Wg = {k_: t.clone().requires_grad_(True) for k_, t in W.items()}
    r_logits_g, _, r_rl_g = reimpl(Wg, lc, inv_freq, att_scale, input_ids, row_pos, row_doc)
    reimpl_loss(r_logits_g, labels, r_rl_g, lc).backward()
    grad_rel = {k_: rel(Wg[k_].grad, grads[k_]) for k_ in sorted(grads)}
    worst_grad = max(grad_rel, key=grad_rel.get)
    assert grad_rel[worst_grad] < 1e-5, (worst_grad, grad_rel[worst_grad])

    # ---- the clamp is exercised ----
    gate = torch.cat([g for g, _ in stats])
    up = torch.cat([u for _, u in stats])
    n_gate_hi, n_gate_lo = int((gate > LIMIT).sum()), int((gate < -LIMIT).sum())
    n_up = int((up.abs() > LIMIT).sum())
    clamped = (n_gate_hi + n_up) / (gate.numel() + up.numel())
    assert CLAMP_RANGE[0] <= clamped <= CLAMP_RANGE[1], clamped
    assert n_gate_hi > 0 and n_up > 0 and n_gate_lo > 0, (n_gate_hi, n_up, n_gate_lo)
    assert len(stats) == L * B * S * K

    # ---- the sinks, the window (and YaRN's truncate) matter ----
    sd = m.state_dict()
    with torch.no_grad():
        base = m(input_ids=input_ids, use_cache=False).logits
        assert torch.equal(base, logits)
        m_nosink = fresh_model(copy.deepcopy(lc), sd)
        for layer in m_nosink.model.layers:
            layer.self_attn.sinks.fill_(float("-inf"))
        nosink = m_nosink(input_ids=input_ids, use_cache=False).logits
        assert torch.isfinite(nosink).all()
        cfg_full = copy.deepcopy(lc)
        cfg_full.layer_types = ["full_attention"] * L
        full = fresh_model(cfg_full, sd)(input_ids=input_ids, use_cache=False).logits
        cfg_wide = copy.deepcopy(lc)
        cfg_wide.sliding_window = S  # a window as long as the row: the same as no window
        wide = fresh_model(cfg_wide, sd)(input_ids=input_ids, use_cache=False).logits
        assert torch.equal(wide, full)
        cfg_none = copy.deepcopy(lc)
        cfg_none.sliding_window = None
        try:
            fresh_model(cfg_none, sd)(input_ids=input_ids, use_cache=False)
            none_refused = False
        except ValueError:
            none_refused = True
    matters = {
        "logits_rel_diff_sinks_minus_inf": rel(nosink, logits),
        "logits_rel_diff_all_layers_full_attention": rel(full, logits),
    }
    rope_meta = {"rope_type": rot.rope_type, "rope_inv_freq": [float(x) for x in inv_freq],
                 "rope_attention_factor": att_scale}
    if rot.rope_type == "yarn":
        rope_meta.update(mr.rope_scaling_meta(m, model_cls, lc, input_ids, logits, True, False))
        rp = mr.rope_semantics(lc.rope_parameters)
        assert rp["truncate"] is False
        cfg_tr = copy.deepcopy(lc)
        cfg_tr.rope_parameters = dict(lc.rope_parameters, truncate=True)
        m_tr = fresh_model(cfg_tr, sd)
        lo_t, hi_t, w_t = mr.yarn_ramp(dict(rp, truncate=True), lc.head_dim)
        assert w_t != rope_meta["yarn_extrapolation_weight"], w_t
        with torch.no_grad():
            tr = m_tr(input_ids=input_ids, use_cache=False).logits
        rope_meta.update({
            "yarn_truncate": False,
            "yarn_correction_range_if_truncated": [lo_t, hi_t],
            "yarn_extrapolation_weight_if_truncated": w_t,
            "rope_inv_freq_if_truncated": [float(x) for x in m_tr.model.rotary_emb.inv_freq],
        })
        matters["logits_rel_diff_yarn_truncate_true"] = rel(tr, logits)
    for k_, v in matters.items():
        assert v > MATTERS_TOL, (k_, v)

    # ---- write ----
    ref = {
        "input_ids": input_ids, "labels": labels, "logits": logits,
        "ce_loss": mr.scalar(ce), "loss": mr.scalar(loss), "aux_loss": mr.scalar(aux),
        "packed.input_ids": packed_ids, "packed.cu_seqlens": cu, "packed.position_ids": pos,
        "packed.logits": packed_logits.detach().contiguous(),
    }
    for li, t in enumerate(rl):
        ref[f"router_logits.{li}"] = t.contiguous()
    for i, h in enumerate(hs):
        ref[f"hidden_states.{i}"] = h.contiguous()
    for k_, g in grads.items():
        ref[f"grad.{k_}"] = g.contiguous()
    for k_, t in ref.items():
        assert t.dtype in (torch.float64, torch.int64), (k_, t.dtype)
    save_file(ref, os.path.join(out_dir, "reference.safetensors"), metadata={"format": "pt"})

    meta = {
        "model_class": model_cls.__name__,
        "seed": seed,
        "transformers": transformers.__version__,
        "torch": torch.__version__.split("+")[0],
        "variant": name,
        "weights_dtype": ("mxfp4 experts, bfloat16 otherwise" if mx else "bfloat16") if bf16 else "float32",
        "roundtrip_max_abs_diff": roundtrip,
        "router_min_topk_gap": prob_gap,
        "router_min_topk_logit_gap": logit_gap,
        "router_rows_changed_by_bias": changed,
        "router_rows": L * B * S,
        "loss": loss,
        "ce_loss": ce,
        "aux_loss": aux,
        "loss_minus_ce_plus_coef_aux": loss - expected_loss,
        "router_aux_loss_coef": coef,
        "moe_layers": list(range(L)),
        "layer_types": list(lc.layer_types),
        "sliding_window": lc.sliding_window,
        "sliding_layers": sliding_layers,
        "tie_word_embeddings": False,
        "prompt_lens": list(spec["prompt_lens"]),
        "packed_doc_lens": [d0, d1],
        "packed_single_forward_max_abs_diff": packed_diff,
        "packed_single_forward_position_ids_only_max_abs_diff": packed_pos_only,
        "sliding_window_none_refused_by_transformers": none_refused,
        "experts_implementation": lc._experts_implementation,
        "expert_clamp": {
            "limit": LIMIT, "alpha": ALPHA,
            "n_values": gate.numel() + up.numel(),
            "clamped_fraction": clamped,
            "gate_above_limit_fraction": n_gate_hi / gate.numel(),
            "up_abs_above_limit_fraction": n_up / up.numel(),
            "gate_below_minus_limit_fraction_not_clamped": n_gate_lo / gate.numel(),
            "over": "every routed (token, expert) pair of the batch forward, all layers",
        },
        "init": {"gate_up_proj": f"{GATE_UP_GAIN}*randn/sqrt(H)", "down_proj": f"{DOWN_GAIN}*randn/sqrt(I)",
                 "sinks": "randn", "biases_std": BIAS_STD, "norms": "1+0.1*randn"},
        **matters,
        "reimpl_rel_diff": reimpl_meta,
        "reimpl_pure_float64_rel_diff": pure,
        "reimpl_grad_max_rel_diff": {"max": grad_rel[worst_grad], "at": worst_grad},
        **rope_meta,
        "n_params": int(sum(t.numel() for t in saved.values())),
        "weight_shapes": {k_: list(saved[k_].shape) for k_ in sorted(saved)},
        "weight_names": sorted(saved),
        "config_json_keys": sorted(cfg_json),
    }
    if mx:
        meta["mxfp4"] = mxfp4_meta(lc, ckpt, quantized, mx_load_dtypes, mx_roundtrip, mx_auto_same)
        meta["mxfp4"]["save_pretrained_of_dequantized_model_writes"] = (
            mx_resave_names + ["(instead of model.layers.L.mlp.experts.gate_up_proj / down_proj: a transformers "
                               "5.17 bug; the gradients here are the parameters' .grad, equal to a BF16 "
                               "checkpoint's model's saved gradients bit for bit)"])
        meta["decode_test_vectors"] = write_decode_vectors(out_dir)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    gen_cfg = os.path.join(out_dir, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)
    for f in os.listdir(out_dir):
        path = os.path.join(out_dir, f)
        os.chmod(path, 0o644)
        assert os.path.getsize(path) < mr.MAX_FILE_BYTES, (f, os.path.getsize(path))
    return meta, None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/data/variants", help="output root (one dir per variant)")
    ap.add_argument("--variant", action="append", help="variant name (repeatable); default: all")
    ap.add_argument("--max-seed-tries", type=int, default=20)
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    for name in args.variant or list(VARIANTS):
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
        print(f"{name}: seed {seed} loss {meta['loss']:.6f} ce {meta['ce_loss']:.6f} aux {meta['aux_loss']:.6f} "
              f"logit gap {meta['router_min_topk_logit_gap']:.3g} clamped {meta['expert_clamp']['clamped_fraction']:.3f} "
              f"reimpl {meta['reimpl_rel_diff']} -> {out_dir}")


if __name__ == "__main__":
    main()
