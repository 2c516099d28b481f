#!/usr/bin/env python3
"""Writes the seed corpus of safetensors_fuzz: a few tiny valid files (standard library only).

Usage: python3 fuzz/make_safetensors_corpus.py fuzz/corpus/safetensors
"""
import json
import os
import struct
import sys

SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E8M0": 1, "F16": 2, "BF16": 2, "I32": 4, "F32": 4,
         "I64": 8, "F64": 8}


def safetensors(tensors, metadata=None):
    """tensors: list of (name, dtype, shape); data are bytes 0, 1, 2, ... Layout as the reference
    writer: element size descending then name, header padded to 8 bytes with spaces."""
    header, data = {}, b""
    for name, dtype, shape in sorted(tensors, key=lambda t: (-SIZES[t[1]], t[0])):
        n = SIZES[dtype]
        for d in shape:
            n *= d
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + n]}
        data += bytes(i % 251 for i in range(n))
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = {
        "empty_header": safetensors([]),
        "one_f32": safetensors([("w", "F32", [2, 2])], {"format": "pt"}),
        "all_dtypes": safetensors([(d.lower(), d, [3]) for d in SIZES], {"format": "pt", "k": "v"}),
        "scalars_and_empty": safetensors(
            [("s", "BF16", []), ("e", "F32", [0, 4]), ("i", "I64", []), ("h", "F16", [2, 0])]),
        "layer": safetensors([("model.layers.0.mlp.experts.0.up_proj.weight", "BF16", [4, 2]),
                              ("model.layers.0.input_layernorm.weight", "F32", [2])],
                             {"format": "pt"}),
        # FP8 block-quantized weights: a [5, 7] weight with scales for blocks of 2 x 3 (F32) and
        # 1 x 1 (E8M0), an activation scale, and a weight without its scales.
        "fp8": safetensors([("a.weight", "F8_E4M3", [5, 7]), ("a.weight_scale_inv", "F32", [3, 3]),
                            ("a.activation_scale", "F32", []),
                            ("b.weight", "F8_E4M3", [2, 2]), ("b.weight_scale_inv", "F8_E8M0", [2, 2]),
                            ("c.weight", "F8_E4M3", [3, 1])],
                           {"format": "pt"}),
    }
    for name, blob in files.items():
        with open(os.path.join(out, name + ".safetensors"), "wb") as f:
            f.write(blob)


if __name__ == "__main__":
    main()
