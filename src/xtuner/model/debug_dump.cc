#include "xtuner/model/debug_dump.h"

#include <cmath>
#include <cstdio>
#include <cstring>

#include "xtuner/core/safetensors.h"
#include "xtuner/model/checkpoint.h"
#include "xtuner/model/gpt_oss_experts.h"
#include "xtuner/model/lora.h"

namespace xt {

namespace {

// An integer tensor of the batch file as int64 values, with its shape.
Result<std::vector<int64_t>> ReadIds(const SafetensorsFile& f, const std::string& name,
                                     Shape* shape) {
  XT_ASSIGN_OR_RETURN(SafetensorsInfo info, f.Info(name));
  *shape = info.shape;
  XT_ASSIGN_OR_RETURN(std::vector<double> v, f.GetF64(name, info.shape));
  std::vector<int64_t> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) {
    if (v[i] != std::floor(v[i]))
      return Status::Error(f.path() + ": tensor \"" + name + "\" holds a non-integer value " +
                           std::to_string(v[i]) + " at index " + std::to_string(i));
    out[i] = int64_t(v[i]);
  }
  return out;
}

Tensor Scalar(double v) {
  Tensor t = Tensor::Empty(DType::F32, {1});  // [1], as the fixtures store losses
  t.f32()[0] = float(v);
  return t;
}

}  // namespace

Status DebugDump(const std::string& model_dir, const std::string& batch_path,
                 const std::string& out_path, const std::string& adapter) {
  XT_ASSIGN_OR_RETURN(SafetensorsFile batch_file, SafetensorsFile::Open(batch_path));
  if (!batch_file.contains("input_ids"))
    return Status::Error(batch_path + ": no tensor \"input_ids\" [B, S]");
  Shape ids_shape, labels_shape;
  XT_ASSIGN_OR_RETURN(std::vector<int64_t> ids, ReadIds(batch_file, "input_ids", &ids_shape));
  if (ids_shape.size() != 2)
    return Status::Error(batch_path + ": \"input_ids\" must be [B, S], found " +
                         ShapeString(ids_shape));
  std::vector<int64_t> labels;
  if (batch_file.contains("labels")) {
    XT_ASSIGN_OR_RETURN(labels, ReadIds(batch_file, "labels", &labels_shape));
    if (labels_shape != ids_shape)
      return Status::Error(batch_path + ": \"labels\" " + ShapeString(labels_shape) +
                           " must have the shape of \"input_ids\" " + ShapeString(ids_shape));
  }
  const int64_t B = ids_shape[0], S = ids_shape[1];

  XT_ASSIGN_OR_RETURN(std::unique_ptr<Transformer> model, LoadHfModel(model_dir, adapter));
  const ModelConfig& cfg = model->config();
  const int64_t V = cfg.vocab_size, H = cfg.hidden_size;
  XT_ASSIGN_OR_RETURN(Batch batch, Batch::FromRows(ids, labels, B, S));
  if (Status st = batch.Validate(V); !st.ok()) return st.With(batch_path);

  std::vector<std::pair<std::string, Tensor>> out;
  XT_ASSIGN_OR_RETURN(ForwardOutputs fwd, model->Forward(batch, true, true));
  out.emplace_back("logits", fwd.logits.Reshape({B, S, V}));
  for (size_t i = 0; i < fwd.hidden_states.size(); ++i)
    out.emplace_back("hidden_states." + std::to_string(i), fwd.hidden_states[i].Reshape({B, S, H}));
  size_t moe_index = 0;
  for (int64_t l = 0; l < cfg.num_layers; ++l)
    if (cfg.layer_is_moe[l])
      out.emplace_back("router_logits." + std::to_string(l), fwd.router_logits[moe_index++]);

  model->ZeroGrads();
  XT_ASSIGN_OR_RETURN(LossInfo loss, model->ForwardBackward(batch));
  out.emplace_back("ce_loss", Scalar(loss.ce_loss));
  if (cfg.is_moe() && cfg.router == RouterKind::kSoftmax)  // DeepSeek-V3 has no balancing loss
    out.emplace_back("aux_loss", Scalar(loss.aux_loss));
  out.emplace_back("loss", Scalar(loss.loss));
  if (cfg.lora.enabled()) {  // the adapters', by PEFT's names
    for (auto& [name, t] : PeftAdapterTensors(cfg, model->layout(), model->grads().f32()))
      out.emplace_back("grad." + name, std::move(t));
  } else {
    for (const ParamInfo& p : model->layout().params())
      if (!p.frozen && !GptOssExpertOf(cfg, p.name))
        out.emplace_back("grad." + p.name, Tensor::Wrap(DType::F32, p.shape,
                                                        model->grads().f32() + p.offset, nullptr));
    // GPT-OSS's experts' gradients, stacked as the hub stores them
    for (auto& [name, t] : GptOssStackedExperts(cfg, model->layout(), model->grads().f32()))
      out.emplace_back("grad." + name, std::move(t));
  }

  if (batch_file.contains("packed.input_ids")) {
    Shape pshape, cshape;
    XT_ASSIGN_OR_RETURN(std::vector<int64_t> pids,
                        ReadIds(batch_file, "packed.input_ids", &pshape));
    if (!batch_file.contains("packed.cu_seqlens"))
      return Status::Error(batch_path +
                           ": \"packed.input_ids\" given without \"packed.cu_seqlens\"");
    XT_ASSIGN_OR_RETURN(std::vector<int64_t> cu, ReadIds(batch_file, "packed.cu_seqlens", &cshape));
    if (pshape.size() != 2 || pshape[0] != 1)
      return Status::Error(batch_path + ": \"packed.input_ids\" must be [1, N], found " +
                           ShapeString(pshape));
    auto packed = Batch::Packed(pids, {}, cu);
    if (!packed.ok()) return packed.status().With(batch_path + ": packed inputs");
    if (Status st = packed->Validate(V); !st.ok()) return st.With(batch_path + ": packed inputs");
    XT_ASSIGN_OR_RETURN(ForwardOutputs pf, model->Forward(*packed, true, false));
    out.emplace_back("packed.logits", pf.logits.Reshape({1, pshape[1], V}));
  }
  XT_RETURN_IF_ERROR(WriteSafetensors(out_path, out, {{"producer", "xtuner debug-dump"}}));
  std::printf("debug-dump: %s: %lld tokens, loss %.8f (ce %.8f, aux %.8f), %zu tensors -> %s\n",
              cfg.model_type.c_str(), (long long)(B * S), loss.loss, loss.ce_loss, loss.aux_loss,
              out.size(), out_path.c_str());
  return Status::OK();
}

}  // namespace xt
