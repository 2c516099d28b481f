// xtuner tokenizer encode|decode --tokenizer PATH [--input FILE] [--add-special-tokens]
//                                                 [--skip-special-tokens]
// JSON lines in, JSON lines out, one for one: {"text": ...} -> {"ids": [...]} (encode) and
// {"ids": [...]} -> {"text": ...} (decode), from --input or stdin to stdout. A malformed line
// stops the command with "PATH:LINE: what is wrong" (exit code 1).
#include "xtuner/data/tokenizer.h"

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "xtuner/core/json.h"

namespace xt::cli {

namespace {

struct TokenizerOptions {
  std::string tokenizer, input;
  bool add_special_tokens = false, skip_special_tokens = false;
};

// One input line to one output line; errors do not name the file or line (the caller does).
Result<std::string> EncodeLine(const Tokenizer& tok, const std::string& line, bool add_special) {
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ParseJson(line));
  if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
    return Status::Error("expected {\"text\": string}");
  }
  XT_ASSIGN_OR_RETURN(std::vector<int32_t> ids,
                      tok.Encode(j["text"].get<std::string>(), add_special));
  std::string out = "{\"ids\": [";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i) out += ", ";
    out += std::to_string(ids[i]);
  }
  out += "]}";
  return out;
}

Result<std::string> DecodeLine(const Tokenizer& tok, const std::string& line, bool skip_special) {
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ParseJson(line));
  if (!j.is_object() || !j.contains("ids") || !j["ids"].is_array()) {
    return Status::Error("expected {\"ids\": [integers]}");
  }
  std::vector<int32_t> ids;
  for (const auto& v : j["ids"]) {
    if (!v.is_number_integer() || v.get<int64_t>() < INT32_MIN || v.get<int64_t>() > INT32_MAX) {
      return Status::Error("ids must be integers, got " + DumpJson(v));
    }
    ids.push_back(v.get<int32_t>());
  }
  XT_ASSIGN_OR_RETURN(std::string text, tok.Decode(ids, skip_special));
  return DumpJson(nlohmann::json{{"text", text}});
}

Status RunTokenizer(const TokenizerOptions& o, bool encode) {
  XT_ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::FromFile(o.tokenizer));
  std::ifstream file;
  if (!o.input.empty()) {
    file.open(o.input, std::ios::binary);
    if (!file) return Status::Error(o.input + ": cannot open");
  }
  std::istream& in = o.input.empty() ? std::cin : file;
  const std::string name = o.input.empty() ? "<stdin>" : o.input;
  std::string line, out;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    auto r = encode ? EncodeLine(tok, line, o.add_special_tokens)
                    : DecodeLine(tok, line, o.skip_special_tokens);
    if (!r.ok()) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      return r.status().With(name + ":" + std::to_string(n));
    }
    out += r.value();
    out += '\n';
    if (out.size() > (1 << 16)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  if (in.bad()) return Status::Error(name + ": read error");
  std::fwrite(out.data(), 1, out.size(), stdout);
  std::fflush(stdout);
  return Status::OK();
}

}  // namespace

void AddTokenizer(CLI::App& app) {
  auto* cmd = app.add_subcommand(
      "tokenizer", "Encode or decode JSON lines with a Hugging Face tokenizer.json, as HF does");
  cmd->require_subcommand(1);
  static TokenizerOptions o;
  auto* enc = cmd->add_subcommand("encode", "{\"text\": ...} lines to {\"ids\": [...]} lines");
  auto* dec = cmd->add_subcommand("decode", "{\"ids\": [...]} lines to {\"text\": ...} lines");
  for (auto* sub : {enc, dec}) {
    sub->add_option("--tokenizer", o.tokenizer, "tokenizer.json or a directory holding one")
        ->required();
    sub->add_option("--input", o.input, "JSON lines file (default: stdin)");
  }
  enc->add_flag("--add-special-tokens", o.add_special_tokens,
                "add the post-processor's special tokens (BOS/EOS)");
  dec->add_flag("--skip-special-tokens", o.skip_special_tokens, "leave special tokens out");
  enc->callback([] { Finish(RunTokenizer(o, /*encode=*/true)); });
  dec->callback([] { Finish(RunTokenizer(o, /*encode=*/false)); });
}

}  // namespace xt::cli
