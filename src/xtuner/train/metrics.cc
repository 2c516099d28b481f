#include "xtuner/train/metrics.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "xtuner/core/json.h"

namespace xt {

namespace {

using nlohmann::json;

json FiniteOrNull(double x) { return std::isfinite(x) ? json(x) : json(nullptr); }

Status ReadDouble(const json& j, const char* key, const std::string& source, double* out) {
  auto it = j.find(key);
  if (it == j.end()) return Status::OK();
  if (it->is_null()) {
    *out = StepMetrics::kNaN;
  } else if (it->is_number()) {
    *out = it->get<double>();
  } else {
    return Status::Error(source + ": \"" + key + "\" must be a number or null, got " +
                         DumpJson(*it));
  }
  return Status::OK();
}

Status ReadInt(const json& j, const char* key, const std::string& source, int64_t* out) {
  auto it = j.find(key);
  if (it == j.end()) return Status::OK();
  if (it->is_number_integer() &&
      (!it->is_number_unsigned() || it->get<uint64_t>() <= uint64_t(INT64_MAX))) {
    *out = it->get<int64_t>();
    return Status::OK();
  }
  return Status::Error(source + ": \"" + key + "\" must be an integer, got " + DumpJson(*it));
}

}  // namespace

json ToJson(const StepMetrics& m) {
  json j = json::object();
  j["step"] = m.step;
  j["loss"] = FiniteOrNull(m.loss);
  j["ce_loss"] = FiniteOrNull(m.ce_loss);
  j["aux_loss"] = FiniteOrNull(m.aux_loss);
  j["grad_norm"] = FiniteOrNull(m.grad_norm);
  j["lr"] = FiniteOrNull(m.lr);
  j["tokens"] = m.tokens;
  j["tokens_per_s"] = FiniteOrNull(m.tokens_per_s);
  j["tflops"] = FiniteOrNull(m.tflops);
  j["mfu"] = FiniteOrNull(m.mfu);
  j["max_expert_violation"] = FiniteOrNull(m.max_expert_violation);
  j["max_expert_violation_worst"] = FiniteOrNull(m.max_expert_violation_worst);
  j["tokens_per_expert"] = m.tokens_per_expert;
  j["peak_memory_bytes"] = m.peak_memory_bytes;
  j["masked_fraction"] = FiniteOrNull(m.masked_fraction);
  j["skipped"] = m.skipped;
  j["step_time_s"] = FiniteOrNull(m.step_time_s);
  j["elapsed_s"] = FiniteOrNull(m.elapsed_s);
  return j;
}

Result<StepMetrics> StepMetricsFromJson(const json& j, const std::string& source) {
  if (!j.is_object()) {
    return Status::Error(source + ": a metrics record must be a JSON object, got " +
                         std::string(j.type_name()));
  }
  if (!j.contains("step")) return Status::Error(source + ": metrics record has no \"step\"");
  StepMetrics m;
  XT_RETURN_IF_ERROR(ReadInt(j, "step", source, &m.step));
  XT_RETURN_IF_ERROR(ReadDouble(j, "loss", source, &m.loss));
  XT_RETURN_IF_ERROR(ReadDouble(j, "ce_loss", source, &m.ce_loss));
  XT_RETURN_IF_ERROR(ReadDouble(j, "aux_loss", source, &m.aux_loss));
  XT_RETURN_IF_ERROR(ReadDouble(j, "grad_norm", source, &m.grad_norm));
  XT_RETURN_IF_ERROR(ReadDouble(j, "lr", source, &m.lr));
  XT_RETURN_IF_ERROR(ReadInt(j, "tokens", source, &m.tokens));
  XT_RETURN_IF_ERROR(ReadDouble(j, "tokens_per_s", source, &m.tokens_per_s));
  XT_RETURN_IF_ERROR(ReadDouble(j, "tflops", source, &m.tflops));
  XT_RETURN_IF_ERROR(ReadDouble(j, "mfu", source, &m.mfu));
  XT_RETURN_IF_ERROR(ReadDouble(j, "max_expert_violation", source, &m.max_expert_violation));
  XT_RETURN_IF_ERROR(
      ReadDouble(j, "max_expert_violation_worst", source, &m.max_expert_violation_worst));
  XT_RETURN_IF_ERROR(ReadInt(j, "peak_memory_bytes", source, &m.peak_memory_bytes));
  XT_RETURN_IF_ERROR(ReadDouble(j, "masked_fraction", source, &m.masked_fraction));
  XT_RETURN_IF_ERROR(ReadDouble(j, "step_time_s", source, &m.step_time_s));
  XT_RETURN_IF_ERROR(ReadDouble(j, "elapsed_s", source, &m.elapsed_s));
  if (auto it = j.find("skipped"); it != j.end()) {
    if (!it->is_boolean()) {
      return Status::Error(source + ": \"skipped\" must be true or false, got " + DumpJson(*it));
    }
    m.skipped = it->get<bool>();
  }
  if (auto it = j.find("tokens_per_expert"); it != j.end()) {
    bool ok = it->is_array();
    for (const auto& layer : *it) {
      ok = ok && layer.is_array();
      if (!ok) break;
      m.tokens_per_expert.emplace_back();
      for (const auto& c : layer) {
        ok = ok && c.is_number_integer();
        if (!ok) break;
        m.tokens_per_expert.back().push_back(c.get<int64_t>());
      }
    }
    if (!ok) {
      return Status::Error(source +
                           ": \"tokens_per_expert\" must be an array of arrays of integers");
    }
  }
  return m;
}

std::vector<std::pair<std::string, double>> DashboardScalars(const StepMetrics& m) {
  const bool moe = !m.tokens_per_expert.empty();
  std::vector<std::pair<std::string, double>> s;
  s.emplace_back("train/loss", m.loss);
  s.emplace_back("train/ce_loss", m.ce_loss);
  if (moe && !std::isnan(m.aux_loss)) s.emplace_back("train/aux_loss", m.aux_loss);
  s.emplace_back("train/grad_norm", m.grad_norm);
  s.emplace_back("train/lr", m.lr);
  s.emplace_back("train/skipped", m.skipped ? 1.0 : 0.0);
  s.emplace_back("perf/tokens_per_s", m.tokens_per_s);
  s.emplace_back("perf/tflops", m.tflops);
  if (!std::isnan(m.mfu)) s.emplace_back("perf/mfu", m.mfu);
  s.emplace_back("perf/step_time_s", m.step_time_s);
  s.emplace_back("memory/peak_gib", double(m.peak_memory_bytes) / double(int64_t(1) << 30));
  s.emplace_back("data/tokens", double(m.tokens));
  s.emplace_back("data/masked_fraction", m.masked_fraction);
  if (moe) {
    s.emplace_back("moe/maxvio", m.max_expert_violation);
    s.emplace_back("moe/maxvio_worst_layer", m.max_expert_violation_worst);
  }
  return s;
}

}  // namespace xt
