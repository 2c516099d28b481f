"""The attention a PyTorch user gets, timed on the GPU beside the engine's (bench/gpu_moe.sh).

One packed row of T tokens (one causal document) of the benchmark model's attention: 32 query
heads and 4 key/value heads of 128, bf16. For each scaled_dot_product_attention backend that
takes it (PyTorch's default choice, flash, cuDNN, memory-efficient), the forward and the
backward (dq, dk, dv from a random output gradient), each the median of a few runs timed with
CUDA events. One line per length and backend:

  peer_attention tokens=T backend=B fwd_ms=F bwd_ms=G fwd_tflops=X bwd_tflops=Y

or `... backend=B error=...` where the backend refuses the shape. FLOPs: causal, 4 T^2 D Hq / 2
for the forward and 2.5 times that for the backward (FlashAttention's convention). Needs torch
with CUDA (the lent GPU machines' image has it); prints one `peer_attention error=` line and exits
0 without it, so the benchmark around it goes on.

  python3 bench/gpu_attention_peer.py --lengths 4096,16384
"""
import argparse
import statistics
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="4096,16384")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    try:
        import torch
        import torch.nn.functional as F
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except Exception as e:  # no torch, or one too old for sdpa_kernel
        print(f"peer_attention error=no usable torch ({type(e).__name__}: {e})")
        return 0
    if not torch.cuda.is_available():
        print("peer_attention error=torch sees no GPU")
        return 0
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION),
                ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    hq, hkv, d = args.heads, args.kv_heads, args.head_dim
    print(f"peer_attention torch={torch.__version__} gpu={torch.cuda.get_device_name()}")
    for t in [int(x) for x in args.lengths.split(",") if x]:
        try:
            g = torch.Generator(device="cuda").manual_seed(t)
            q = torch.randn(1, hq, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
            k = torch.randn(1, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
            v = torch.randn(1, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
            dout = torch.randn(1, hq, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
        except Exception as e:  # out of memory, say: the next length may still fit
            print(f"peer_attention tokens={t} error={type(e).__name__}")
            continue
        fwd_flops = 4.0 * t * t * d * hq / 2
        for name, backend in backends:
            try:
                fwd, bwd = [], []
                for _ in range(args.runs + 1):  # the first is a warm-up
                    qq, kk, vv = (x.detach().requires_grad_() for x in (q, k, v))
                    e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                    if backend is None:
                        ctx = torch.enable_grad()
                    else:
                        ctx = sdpa_kernel([backend])
                    with ctx:
                        e[0].record()
                        out = F.scaled_dot_product_attention(qq, kk, vv, is_causal=True,
                                                             enable_gqa=True)
                        e[1].record()
                        out.backward(dout)
                        e[2].record()
                    torch.cuda.synchronize()
                    fwd.append(e[0].elapsed_time(e[1]))
                    bwd.append(e[1].elapsed_time(e[2]))
                f, b = statistics.median(fwd[1:]), statistics.median(bwd[1:])
                print(f"peer_attention tokens={t} backend={name} fwd_ms={f:.3f} bwd_ms={b:.3f} "
                      f"fwd_tflops={fwd_flops / f / 1e9:.1f} "
                      f"bwd_tflops={2.5 * fwd_flops / b / 1e9:.1f}")
            except Exception as e:  # the backend refuses the shape or the GPU
                msg = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
                print(f"peer_attention tokens={t} backend={name} error={msg.replace(' ', '_')}")
            sys.stdout.flush()
        del q, k, v, dout
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
