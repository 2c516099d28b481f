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

using std::vector;

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

namespace {

Status CheckOptions(const GenerateOptions& o) {
  if (o.max_new_tokens < 0) return Status::Error("generate: max_new_tokens must be >= 0");
  if (o.temperature < 0) return Status::Error("generate: temperature must be >= 0");
  if (!(o.top_p > 0 && o.top_p <= 1)) return Status::Error("generate: top_p must be in (0, 1]");
  return Status::OK();
}

// The outputs of `prompts`, decoded together. Collective: every rank runs the same number of
// model calls, one of a token over `scratch` where it has nothing left to run.
vector<vector<int32_t>> DecodeTogether(Transformer& model, Comm& world,
                                       const vector<const vector<int32_t>*>& prompts,
                                       const GenerateOptions& o, KvCache* scratch) {
  const size_t n = prompts.size();
  vector<KvCache> caches;
  for (const vector<int32_t>* p : prompts)
    caches.push_back(model.NewKvCache(int64_t(p->size()) + o.max_new_tokens));
  vector<vector<int32_t>> out(n), next(n);
  vector<uint64_t> rng(n, o.seed);
  vector<bool> done(n, o.max_new_tokens == 0);
  for (size_t i = 0; i < n; ++i) next[i] = *prompts[i];
  while (true) {
    vector<vector<int32_t>> ids;
    vector<KvCache*> at;
    vector<size_t> which;
    for (size_t i = 0; i < n; ++i)
      if (!done[i]) {
        ids.push_back(next[i]);
        at.push_back(&caches[i]);
        which.push_back(i);
      }
    double busy = which.empty() ? 0 : 1;
    world.AllReduceMax(&busy, 1);
    if (busy == 0) return out;
    if (which.empty()) {  // keep step with the ranks that still decode
      scratch->length = 0;
      ids = {{0}};
      at = {scratch};
    }
    Result<vector<vector<float>>> logits = model.ForwardCachedMany(ids, at);
    // (The prompts were checked and the caches hold every position: an error here is a bug, and
    // a rank that returned would leave the others waiting in the next step.)
    if (!logits.ok()) world.Abort(logits.status().message());
    for (size_t s = 0; s < which.size(); ++s) {
      const size_t i = which[s];
      const int32_t token = SampleToken((*logits)[s], o, &rng[i]);
      out[i].push_back(token);
      next[i] = {token};
      done[i] = int64_t(out[i].size()) >= o.max_new_tokens ||
                std::find(o.stop_ids.begin(), o.stop_ids.end(), token) != o.stop_ids.end();
    }
  }
}

}  // namespace

Result<vector<vector<int32_t>>> GenerateMany(Transformer& model, Comm& world,
                                             const vector<vector<int32_t>>& prompts,
                                             const GenerateOptions& o, int64_t batch) {
  XT_RETURN_IF_ERROR(CheckOptions(o));
  if (batch < 1) return Status::Error("generate: batch must be >= 1");
  const int64_t N = int64_t(prompts.size()), V = model.config().vocab_size;
  for (int64_t i = 0; i < N; ++i) {
    const std::string which = "generate: prompt " + std::to_string(i) + ": ";
    if (prompts[i].empty()) return Status::Error(which + "empty");
    for (int32_t id : prompts[i])
      if (id < 0 || id >= V)
        return Status::Error(which + "token id " + std::to_string(id) +
                             " is outside the vocabulary [0, " + std::to_string(V) + ")");
  }
  // Round k: every rank's prompts j in [k batch, (k + 1) batch), which are items j W + r, that
  // is [k batch W, (k + 1) batch W). shared (batch W, 1 + max_new_tokens): an item's length,
  // then its tokens; zero where another rank ran it, so that a sum shares them.
  const int64_t W = world.size(), rank = world.rank(), row = 1 + o.max_new_tokens;
  const int64_t per_rank = (N + W - 1) / W;
  batch = std::min(batch, std::max<int64_t>(per_rank, 1));
  vector<vector<int32_t>> out(N);
  KvCache scratch = model.NewKvCache(1);
  for (int64_t first = 0; first < per_rank; first += batch) {
    vector<const vector<int32_t>*> mine;
    for (int64_t j = first; j < std::min(per_rank, first + batch); ++j)
      if (j * W + rank < N) mine.push_back(&prompts[j * W + rank]);
    const vector<vector<int32_t>> got = DecodeTogether(model, world, mine, o, &scratch);
    const int64_t items = (std::min(per_rank, first + batch) - first) * W;
    vector<double> shared(items * row, 0.0);
    for (size_t s = 0; s < got.size(); ++s) {
      double* a = shared.data() + (int64_t(s) * W + rank) * row;  // item (first + s) W + rank
      a[0] = double(got[s].size());
      std::copy(got[s].begin(), got[s].end(), a + 1);
    }
    world.AllReduceSum(shared.data(), int64_t(shared.size()));
    for (int64_t k = 0; k < items && first * W + k < N; ++k) {
      const double* a = shared.data() + k * row;
      out[first * W + k].assign(a + 1, a + 1 + int64_t(a[0]));
    }
  }
  return out;
}

Result<std::vector<int32_t>> Generate(Transformer& model, const std::vector<int32_t>& prompt,
                                      const GenerateOptions& o) {
  if (prompt.empty()) return Status::Error("generate: the prompt is empty");
  XT_RETURN_IF_ERROR(CheckOptions(o));
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
