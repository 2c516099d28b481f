#include "xtuner/train/evaluate.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "xtuner/core/json.h"
#include "xtuner/data/chat_prompt.h"
#include "xtuner/model/generate.h"

namespace xt {

namespace {

std::string Trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

// The file's items, every line checked.
Result<std::vector<EvalItem>> ReadEvalItems(const std::string& path, const Tokenizer& tokenizer,
                                            const ChatTemplate& chat_template, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return Status::Error(path + ": cannot open the eval file");
  std::vector<EvalItem> items;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(lineno) + ": ";
    Result<nlohmann::json> parsed = ParseJson(line);
    if (!parsed.ok()) return Status::Error(where + parsed.status().message());
    const nlohmann::json& j = *parsed;
    if (!j.is_object() || !j.contains("prompt") || !j["prompt"].is_string() ||
        !j.contains("answer") || !j["answer"].is_string())
      return Status::Error(where + "expected {\"prompt\": string, \"answer\": string}");
    EvalItem item;
    item.prompt = j["prompt"].get<std::string>();
    item.answer = j["answer"].get<std::string>();
    Conversation c;
    Message user;
    user.role = "user";
    user.content = item.prompt;
    c.messages.push_back(user);
    Result<std::vector<int32_t>> ids = EncodeGenerationPrompt(chat_template, tokenizer, c);
    if (!ids.ok()) return Status::Error(where + ids.status().message());
    for (int32_t id : *ids)
      if (id < 0 || id >= vocab_size)
        return Status::Error(where + "the prompt has token " + std::to_string(id) +
                             ", outside the model's vocabulary of " + std::to_string(vocab_size));
    item.ids = std::move(*ids);
    items.push_back(std::move(item));
  }
  return items;
}

}  // namespace

Result<EvalSet> ReadEvalSet(const std::string& path, const Tokenizer& tokenizer,
                            const ChatTemplate& chat_template, int64_t max_new_tokens,
                            int64_t vocab_size) {
  if (max_new_tokens < 0) return Status::Error("eval.max_new_tokens must be >= 0");
  XT_ASSIGN_OR_RETURN(std::string eot, EndOfTurnToken(chat_template.name()));
  if (!tokenizer.TokenToId(eot))
    return Status::Error(tokenizer.source() + ": no token " + eot + " to stop at");
  EvalSet set;
  set.path = path;
  set.options.max_new_tokens = max_new_tokens;
  for (const std::string& stop : StopTokens(chat_template.name()))
    if (auto id = tokenizer.TokenToId(stop)) set.options.stop_ids.push_back(*id);
  XT_ASSIGN_OR_RETURN(set.items, ReadEvalItems(path, tokenizer, chat_template, vocab_size));
  return set;
}

int64_t EvalBatchSize(const ModelConfig& cfg, const EvalSet& set) {
  size_t longest = 0;
  for (const EvalItem& item : set.items) longest = std::max(longest, item.ids.size());
  const int64_t capacity = int64_t(longest) + set.options.max_new_tokens;
  const double per_prompt =  // keys and values, fp32, every layer
      8.0 * double(cfg.num_layers) * double(KvCacheLayerFloats(cfg, capacity));
  return std::clamp<int64_t>(int64_t(kEvalCacheBytes / per_prompt), 1, kEvalBatch);
}

Result<EvalReport> Evaluate(Transformer& model, Comm& world, const EvalSet& set,
                            const Tokenizer& tokenizer, const ChatTemplate& chat_template,
                            std::FILE* log) {
  const GenerateOptions& go = set.options;
  const std::vector<EvalItem>& items = set.items;
  std::vector<std::vector<int32_t>> prompts;
  for (const EvalItem& item : items) prompts.push_back(item.ids);
  XT_ASSIGN_OR_RETURN(std::vector<std::vector<int32_t>> answers,
                      GenerateMany(model, world, prompts, go, EvalBatchSize(model.config(), set)));
  EvalReport report;
  for (size_t i = 0; i < items.size(); ++i) {
    std::vector<int32_t>& out = answers[i];
    if (!out.empty() && std::count(go.stop_ids.begin(), go.stop_ids.end(), out.back()))
      out.pop_back();
    XT_ASSIGN_OR_RETURN(std::string text, DecodeAnswer(chat_template, tokenizer, out));
    const bool ok = Trim(text) == Trim(items[i].answer);
    report.total += 1;
    report.correct += ok;
    if (log && report.total <= 5)
      std::fprintf(log, "  eval: %s -> %s (%s)\n", items[i].prompt.c_str(), Trim(text).c_str(),
                   ok ? "right" : ("expected " + items[i].answer).c_str());
  }
  if (log)
    std::fprintf(log, "eval: %lld / %lld right, accuracy %.1f%% (%s)\n", (long long)report.correct,
                 (long long)report.total, 100.0 * report.accuracy(), set.path.c_str());
  return report;
}

}  // namespace xt
