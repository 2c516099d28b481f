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
}  // namespace

Result<EvalReport> Evaluate(Transformer& model, const Tokenizer& tokenizer,
                            const ChatTemplate& chat_template, const std::string& path,
                            int64_t max_new_tokens, std::FILE* log) {
  std::ifstream in(path);
  if (!in) return Status::Error(path + ": cannot open the eval file");
  XT_ASSIGN_OR_RETURN(std::string eot, EndOfTurnToken(chat_template.name()));
  const auto eot_id = tokenizer.TokenToId(eot);
  if (!eot_id) return Status::Error(tokenizer.source() + ": no token " + eot + " to stop at");
  GenerateOptions go;
  go.max_new_tokens = max_new_tokens;
  for (const std::string& stop : StopTokens(chat_template.name()))
    if (auto id = tokenizer.TokenToId(stop)) go.stop_ids.push_back(*id);
  EvalReport report;
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
    Conversation c;
    Message user;
    user.role = "user";
    user.content = j["prompt"].get<std::string>();
    c.messages.push_back(user);
    XT_ASSIGN_OR_RETURN(std::vector<int32_t> prompt,
                        EncodeGenerationPrompt(chat_template, tokenizer, c));
    XT_ASSIGN_OR_RETURN(std::vector<int32_t> out, Generate(model, prompt, go));
    if (!out.empty() && std::count(go.stop_ids.begin(), go.stop_ids.end(), out.back()))
      out.pop_back();
    XT_ASSIGN_OR_RETURN(std::string text, DecodeAnswer(chat_template, tokenizer, out));
    const bool ok = Trim(text) == Trim(j["answer"].get<std::string>());
    report.total += 1;
    report.correct += ok;
    if (log && report.total <= 5)
      std::fprintf(log, "  eval: %s -> %s (%s)\n", user.content.c_str(), Trim(text).c_str(),
                   ok ? "right" : ("expected " + j["answer"].get<std::string>()).c_str());
  }
  if (log)
    std::fprintf(log, "eval: %lld / %lld right, accuracy %.1f%% (%s)\n", (long long)report.correct,
                 (long long)report.total, 100.0 * report.accuracy(), path.c_str());
  return report;
}

}  // namespace xt
