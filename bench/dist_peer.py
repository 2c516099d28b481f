"""PyTorch peer of the xtuner.cpp distributed-training memory benchmark: HF transformers'
Qwen3MoeForCausalLM (random init, fp32) sharded with FSDP2 (fully_shard per decoder layer, then
the root) over a CPU device mesh with the gloo backend, trained with AdamW + grad clipping.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node N bench/dist_peer.py \
        --config CONFIG.json --seq 512 --rows-per-rank R --steps S

Each rank trains on its own (R, seq) random ids (seeded by rank, labels = ids); a step is
zero_grad + forward + backward + clip_grad_norm_(1.0) + AdamW.step (lr 1e-4), timed with
perf_counter. Rank 0 prints key=value lines:
  impl                  fsdp2 (or fsdp1 if FSDP2 failed to shard on CPU/gloo)
  world                 N
  state_bytes_per_rank  max over ranks of the local bytes of parameter shards + gradient
                        shards + optimizer state, measured after the first step
  peak_rss_mib          max over ranks of ru_maxrss
  tokens_per_s          N * R * seq / median step time over steps 2..S
  torch, transformers   versions
With --export DIR, after the steps the model is written to DIR as a user of FSDP2 writes a
Hugging Face model: get_model_state_dict(full_state_dict=True, cpu_offload=True) gathers it to
rank 0, whose save_pretrained writes it (fp32, in shards of --max-shard-size). Then also:
  rank0_rss_before_export_mib, rank0_rss_after_export_mib   rank 0's ru_maxrss around it
  export_s              seconds of the export (gather + write)
"""
import argparse
import os
import resource
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
import torch.distributed as dist
import transformers
from transformers import AutoConfig, Qwen3MoeForCausalLM


def local_nbytes(t):
    if t is None or not torch.is_tensor(t):
        return 0
    if hasattr(t, "to_local"):  # DTensor (FSDP2 shards)
        t = t.to_local()
    return t.numel() * t.element_size()


def state_bytes(model, opt):
    n = sum(local_nbytes(p) + local_nbytes(p.grad) for p in model.parameters())
    for st in opt.state.values():
        n += sum(local_nbytes(v) for v in st.values())
    return n


def shard(model, world):
    """FSDP2 over a CPU mesh; FSDP1 (CPU, no device_id) only if FSDP2 raises."""
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model, "fsdp2"
    except Exception as e:  # noqa: BLE001
        print(f"FSDP2 failed ({type(e).__name__}: {e}); falling back to FSDP1", file=sys.stderr)
        from functools import partial
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy
        layer_cls = type(model.model.layers[0])
        policy = partial(transformer_auto_wrap_policy, transformer_layer_cls={layer_cls})
        return FSDP(model, auto_wrap_policy=policy, device_id=None, use_orig_params=True), "fsdp1"


def export(model, out, max_shard_size, rank):
    """The full state dict on rank 0 (in CPU memory), written there by save_pretrained."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    dist.barrier()
    t0 = time.perf_counter()
    sd = get_model_state_dict(
        model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        size = int(max_shard_size) if max_shard_size.isdigit() else max_shard_size
        model.save_pretrained(out, state_dict=sd, max_shard_size=size)
    del sd
    dist.barrier()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="a Qwen3-MoE config.json")
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--rows-per-rank", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--export", default="", help="write the trained model here (see above)")
    ap.add_argument("--max-shard-size", default="5GB",
                    help="save_pretrained's: bytes, or e.g. 200MB")
    args = ap.parse_args()
    assert args.steps >= 2, "need at least 2 steps (step 1 is the warm-up)"

    torch.set_num_threads(1)  # the ranks share the machine's cores
    dist.init_process_group(backend="gloo")
    rank, world = dist.get_rank(), dist.get_world_size()

    torch.manual_seed(0)  # same init on every rank
    cfg = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(args.config)))
    cfg._attn_implementation = "sdpa"
    model = Qwen3MoeForCausalLM(cfg).float().train()
    model, impl = shard(model, world)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    g = torch.Generator().manual_seed(1000 + rank)
    ids = torch.randint(0, cfg.vocab_size, (args.rows_per_rank, args.seq), generator=g)

    def step():
        opt.zero_grad(set_to_none=False)
        out = model(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    dist.barrier()
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        if i == 0:
            sb = state_bytes(model, opt)
    med = statistics.median(times[1:])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.export:
        export_s = export(model, args.export, args.max_shard_size, rank)
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    stats = torch.tensor([sb, rss], dtype=torch.float64)
    dist.all_reduce(stats, op=dist.ReduceOp.MAX)
    medt = torch.tensor([med], dtype=torch.float64)
    dist.all_reduce(medt, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace
    if rank == 0:
        print(f"impl={impl}\nworld={world}")
        print(f"state_bytes_per_rank={int(stats[0])}")
        print(f"peak_rss_mib={stats[1] / 2**20:.1f}")
        print(f"tokens_per_s={world * args.rows_per_rank * args.seq / float(medt[0]):.3f}")
        print(f"torch={torch.__version__}\ntransformers={transformers.__version__}")
        if args.export:
            print(f"rank0_rss_before_export_mib={rss / 2**20:.1f}")
            print(f"rank0_rss_after_export_mib={rss_after / 2**20:.1f}")
            print(f"export_s={export_s:.2f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
