#!/usr/bin/env python3
"""Writes tests/data/fp8/quantize.safetensors: transformers' own FP8 block quantization
(Fp8Quantize, what save_pretrained applies to an FP8 model) of one float32 weight, for the
engine's FP8 export (tests/model/fp8_weights_test.cc) to match bit for bit.

  w              F32 [64, 96]   the input, 4 x 3 blocks of 16 x 32, one magnitude per block
                                (1e-6 .. 1e5), one block all zero, one block whose amax is 448
                                exactly (scale 1) holding values half-way between E4M3 values
                                (ties), negative ones, and subnormal ones
  codes          F8_E4M3 [64, 96]
  scale_inv      F32 [4, 3]

Usage (the venv of tools/reference/README.md):
  python tools/reference/make_fp8_quantize_reference.py tests/data/fp8/quantize.safetensors
"""
import sys
import types

import torch
import transformers
from safetensors.torch import save_file
from transformers.integrations.finegrained_fp8 import Fp8Quantize

BLOCK = (16, 32)


def main():
    out = sys.argv[1]
    gen = torch.Generator().manual_seed(8)
    w = torch.randn(64, 96, generator=gen, dtype=torch.float32)
    for k in range(12):
        br, bc = divmod(k, 3)
        w[br * 16:(br + 1) * 16, bc * 32:(bc + 1) * 32] *= 10.0 ** (k - 6)
    w[16:32, 32:64] = 0  # block (1, 1): all zero
    ties = w[32:48, 64:96]  # block (2, 2): amax 448, so s = 448 / 448 = 1 and codes = E4M3(w)
    vals = torch.tensor([448.0, -448.0, 1.0625, -1.0625, 1.1875, 1.3125, 3.0 / 1024, 2.0 ** -10,
                         -(2.0 ** -10), 3 * 2.0 ** -10, 0.0, -0.0, 440.0, 232.0, 0.01, 2.0 ** -9])
    ties[:, :] = vals.repeat(16, 2)[:, :32]
    cfg = transformers.FineGrainedFP8Config(weight_block_size=BLOCK)
    quantizer = types.SimpleNamespace(quantization_config=cfg)
    got = Fp8Quantize(quantizer)._quantize_one("w.weight", w.clone())
    codes, scale_inv = got["w.weight"], got["w.weight_scale_inv"]
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == w.shape, (codes.dtype, codes.shape)
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (4, 3), scale_inv.shape
    assert float(scale_inv[1, 1]) == 1.0 and float(scale_inv[2, 2]) == 1.0
    save_file({"w": w.contiguous(), "codes": codes.contiguous(), "scale_inv": scale_inv.contiguous()}, out,
              metadata={"transformers": transformers.__version__, "torch": torch.__version__.split("+")[0],
                        "weight_block_size": f"{BLOCK[0]},{BLOCK[1]}"})
    print(out, "max |code|", float(codes.float().abs().max()))


if __name__ == "__main__":
    main()
