#include "xtuner/train/run_memory.h"

#include "xtuner/dist/host_memory.h"
#include "xtuner/model/params.h"
#include "xtuner/plan/plan.h"
#include "xtuner/train/progress_format.h"

namespace xt {

int64_t HostStateBytes(const ShardedParams& store, bool on_gpu) {
  return 4 * store.shard_size() + (on_gpu ? 8 : 12) * store.trainable_floats();
}

std::string HostStateWarning(int64_t need, int64_t share, bool on_gpu) {
  if (need <= share) return "";
  return "host memory: a rank's fp32 state (its parameters' shard" +
         std::string(on_gpu ? ", which its GPU uploads from and syncs back to" : "") +
         ", and the optimizer's state of what trains) takes " + HumanBytes(double(need)) +
         ", but " + HumanBytes(double(share)) +
         " are available to a rank (MemAvailable, shared by the ranks of a host): loading the "
         "model may be killed or swap; more hosts (mpirun) would each hold a share";
}

std::string CheckHostState(const ShardedParams& store, bool on_gpu, Comm& world) {
  const int64_t available = AvailableHostMemory();
  const int on_host = RanksOnThisHost(world);
  // The largest need and the least share of any rank (the shards are near equal); nothing
  // where a rank cannot read its host's memory. Every rank gives the same answer.
  double need_unknown_least[3] = {double(HostStateBytes(store, on_gpu)), available < 0 ? 1.0 : 0.0,
                                  -double(available / on_host)};
  world.AllReduceMax(need_unknown_least, 3);
  if (need_unknown_least[1] > 0) return "";
  return HostStateWarning(int64_t(need_unknown_least[0]), int64_t(-need_unknown_least[2]), on_gpu);
}

void AddMemorySummary(const TrainConfig& cfg, const ModelConfig& mc, const Mesh& mesh,
                      const ShardedParams& store, int64_t bf16_only, Comm& world, std::FILE* log,
                      RunSummary* sum) {
  const int64_t total_params = ParamLayout(mc).total();
  // fp32 parameters, gradients and two AdamW moments of the largest shard (a LoRA run's
  // gradients and moments: only the adapters' pages are ever written).
  double shard_bytes = 4.0 * double(store.shard_size()) + 12.0 * double(store.trainable_floats());
  world.AllReduceMax(&shard_bytes, 1);
  sum->memory_estimate_bytes = int64_t(shard_bytes);
  if (cfg.device == "cpu") {
    sum->extra.push_back(
        {"memory", "per rank",
         HumanBytes(shard_bytes) + " params + grads + AdamW (fp32, ZeRO-3 shard" +
             (mc.lora.enabled() ? "; grads and AdamW of the adapters only)" : ")")});
    // The largest micro-batch on paper (xtuner plan) against the host memory available to each
    // rank on this host (the least of any rank's): a warning where it cannot fit, naming the
    // model.recompute that would (the kernel would kill the run, or it would swap).
    const int64_t available = AvailableHostMemory();
    const int on_host = RanksOnThisHost(world);
    double least = available >= 0 ? -double(available / on_host) : 1.0;
    world.AllReduceMax(&least, 1);
    if (least <= 0) {
      PlanInputs plan;
      plan.model = mc;
      plan.seq = cfg.max_length;
      plan.micro_batch_size = cfg.micro_batch_size;
      plan.world = mesh.world;
      plan.ep = mesh.ep;
      plan.recompute = cfg.recompute;
      plan.precision = cfg.precision == "bf16" ? Precision::kBf16 : Precision::kFp32;
      std::string fits;
      const Status st = CheckStepFits(plan, int64_t(-least), &fits);
      sum->extra.push_back(
          {"memory", "largest step", st.ok() ? fits : "may not fit: see the warning"});
      if (!st.ok() && log) std::fprintf(log, "warning: %s\n", st.message().c_str());
    }
  } else {  // the device holds the host's shard (ZeRO-3 as on the CPU); the host keeps it too
    // fp32 params, grads and two moments of the shard; in bf16 mode one rank keeps a bf16 copy of
    // the whole model's weights, several make one per gathered unit (with the unit).
    // A LoRA run's frozen matmul weights may be held in that copy only (their fp32 not held), or
    // over several GPUs in bf16 in the shard (2 B a float instead of 4).
    const bool whole_bf16 = cfg.precision == "bf16" && mesh.world == 1;
    // The largest rank's device and host bytes, and whether any rank holds any in bf16 only.
    double most[3] = {4.0 * double(store.shard_size()) + 12.0 * double(store.trainable_floats()) -
                          (whole_bf16 ? 4.0 : 2.0) * double(bf16_only) +
                          (whole_bf16 ? 2.0 * double(total_params) : 0.0),
                      double(HostStateBytes(store, /*on_gpu=*/true)), double(bf16_only > 0)};
    world.AllReduceMax(most, 3);
    const double device_bytes = most[0], host_bytes = most[1], held = most[2];
    sum->memory_estimate_bytes = int64_t(device_bytes);
    sum->extra.push_back(
        {"memory", "per " + cfg.device + " device",
         HumanBytes(device_bytes) + " params + grads + AdamW (fp32, " +
             (mesh.world == 1 ? std::string("the whole model") : std::string("ZeRO-3 shard")) +
             (whole_bf16 ? ", and a bf16 copy of the weights" : "") +
             (held > 0 ? (whole_bf16 ? ", the frozen matmul weights' fp32 not held"
                                     : ", the frozen matmul weights in bf16")
                       : "") +
             (mc.lora.enabled() ? "; grads and AdamW of the adapters only" : "") +
             "), plus activations" + (mesh.world > 1 ? " and the units gathered" : "")});
    sum->extra.push_back({"memory", "per rank, host",
                          HumanBytes(host_bytes) + " params + AdamW (fp32, the same shard)"});
  }
}

}  // namespace xt
