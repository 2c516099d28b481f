#include "xtuner/train/backend.h"

#include <map>
#include <mutex>

#include "xtuner/dist/sharded_params.h"
#include "xtuner/optim/clip.h"

namespace xt {
namespace {

std::mutex& RegistryMutex() {
  static std::mutex mu;
  return mu;
}

struct Registered {
  TrainBackendFactory factory = nullptr;
  TrainBackendProbe probe = nullptr;
};

std::map<std::string, Registered>& Registry() {
  static std::map<std::string, Registered> backends;
  return backends;
}

Registered Find(const std::string& device) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  auto it = Registry().find(device);
  return it == Registry().end() ? Registered{} : it->second;
}

Status NotBuilt(const std::string& device) {
  return Status::Error("train.device = \"" + device +
                       "\": this program was built without that backend (the CUDA backend "
                       "needs the CUDA toolkit at build time: cmake -DXTUNER_CUDA=ON)");
}

class CpuTrainBackend : public TrainBackend {
 public:
  CpuTrainBackend(Transformer* model, ShardedParams* store, AdamW* adamw)
      : model_(model), store_(store), adamw_(adamw) {}
  std::string Describe() const override { return "cpu"; }
  Status ZeroGrads() override {
    store_->ZeroGrads();
    return Status::OK();
  }
  Result<BalanceStats> RouterStats(const Batch& batch) override {
    return model_->RouterStats(batch);
  }
  Result<LossInfo> ForwardBackward(const Batch& batch, double ce_weight, double aux_weight,
                                   const BalancePool& pool) override {
    return model_->ForwardBackward(batch, ce_weight, aux_weight, pool);
  }
  Result<double> GradSumOfSquares() override {
    if (store_->trainable_floats() == store_->shard_size())
      return sum_of_squares(store_->grads(), store_->shard_size());
    double sum = 0;  // a LoRA run: the frozen weights' gradients are zero, and never read
    for (const auto& [at, n] : store_->trainable_ranges())
      sum += sum_of_squares(store_->grads() + at, n);
    return sum;
  }
  Status Step(double lr, float grad_scale) override {
    adamw_->Step(store_->params(), store_->grads(), lr, grad_scale);
    return Status::OK();
  }
  Status AddToShard(const std::vector<ShardAdd>& adds) override {
    ApplyShardAdds(adds, store_->params());
    return Status::OK();
  }
  Status SyncToHost() override { return Status::OK(); }
  int64_t recompute_layers() const override { return model_->recompute_layers(); }

 private:
  Transformer* model_;
  ShardedParams* store_;
  AdamW* adamw_;
};

}  // namespace

void RegisterTrainBackend(const std::string& device, TrainBackendFactory factory,
                          TrainBackendProbe probe) {
  std::lock_guard<std::mutex> lock(RegistryMutex());
  if (factory)
    Registry()[device] = {factory, probe};
  else
    Registry().erase(device);
}

Status CheckTrainBackend(const std::string& device) {
  if (device == "cpu") return Status::OK();
  const Registered r = Find(device);
  if (!r.factory) return NotBuilt(device);
  return r.probe ? r.probe() : Status::OK();
}

Result<std::unique_ptr<TrainBackend>> MakeTrainBackend(const std::string& device,
                                                       const TrainBackendArgs& args) {
  const Registered r = Find(device);
  if (!r.factory) return NotBuilt(device);
  XT_ASSIGN_OR_RETURN(std::unique_ptr<TrainBackend> backend, r.factory(args));
  if (!backend) return Status::Error("train.device = \"" + device + "\": no backend was made");
  return backend;
}

std::unique_ptr<TrainBackend> MakeCpuTrainBackend(Transformer* model, ShardedParams* store,
                                                  AdamW* adamw) {
  return std::make_unique<CpuTrainBackend>(model, store, adamw);
}

}  // namespace xt
