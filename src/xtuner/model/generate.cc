#include "xtuner/model/generate.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <sstream>

#include "xtuner/core/json.h"
#include "xtuner/core/rng.h"

namespace xt {

Result<std::vector<int64_t>> GenerationEosIds(const std::string& path) {
  std::vector<int64_t> ids;
  if (!std::filesystem::exists(path)) return ids;
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ReadJsonFile(path));
  if (!j.is_object()) return Status::Error(path + ": not a JSON object");
  if (!j.contains("eos_token_id") || j["eos_token_id"].is_null()) return ids;
  const nlohmann::json& e = j["eos_token_id"];
  for (const nlohmann::json& id : e.is_array() ? e : nlohmann::json::array({e})) {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > INT32_MAX)
      return Status::Error(path + ": eos_token_id must be a token id or a list of them, found " +
                           DumpJson(e));
    ids.push_back(id.get<int64_t>());
  }
  return ids;
}

int32_t SampleToken(const std::vector<float>& logits, const GenerateOptions& o,
                    uint64_t* rng_state) {
  const int64_t V = int64_t(logits.size());
  if (o.temperature <= 0)
    return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return logits[a] > logits[b]; });
  int64_t keep = o.top_k > 0 ? std::min<int64_t>(o.top_k, V) : V;
  std::vector<double> p(keep);
  const double m = logits[order[0]];
  double sum = 0;
  for (int64_t i = 0; i < keep; ++i)
    sum += (p[i] = std::exp((logits[order[i]] - m) / o.temperature));
  if (o.top_p < 1.0) {  // smallest prefix whose probability reaches top_p
    double acc = 0;
    for (int64_t i = 0; i < keep; ++i) {
      acc += p[i] / sum;
      if (acc >= o.top_p) {
        keep = i + 1;
        break;
      }
    }
    sum = std::accumulate(p.begin(), p.begin() + keep, 0.0);
  }
  const double u = double(SplitMix64(rng_state) >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (int64_t i = 0; i < keep; ++i) {
    acc += p[i];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

Result<std::vector<int32_t>> Generate(Transformer& model, const std::vector<int32_t>& prompt,
                                      const GenerateOptions& o) {
  if (prompt.empty()) return Status::Error("generate: the prompt is empty");
  if (o.max_new_tokens < 0) return Status::Error("generate: max_new_tokens must be >= 0");
  if (o.temperature < 0) return Status::Error("generate: temperature must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) return Status::Error("generate: top_p must be in (0, 1]");
  KvCache cache = model.NewKvCache(int64_t(prompt.size()) + o.max_new_tokens);
  uint64_t rng = o.seed;
  std::vector<int32_t> out;
  if (o.max_new_tokens == 0) return out;
  XT_ASSIGN_OR_RETURN(std::vector<float> logits, model.ForwardCached(prompt, &cache));
  while (true) {
    const int32_t next = SampleToken(logits, o, &rng);
    out.push_back(next);
    if (int64_t(out.size()) >= o.max_new_tokens ||
        std::find(o.stop_ids.begin(), o.stop_ids.end(), next) != o.stop_ids.end())
      break;
    XT_ASSIGN_OR_RETURN(logits, model.ForwardCached({next}, &cache));
  }
  return out;
}

}  // namespace xt
