// LoadJsonl: one pass over a JSONL file, one sample per line, bad lines reported or skipped.
#include "xtuner/data/dataset.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>

#include "xtuner/core/json.h"
#include "xtuner/core/utf8.h"

namespace xt {

namespace {

using nlohmann::ordered_json;

struct FileCloser {
  void operator()(FILE* f) const { std::fclose(f); }
};

// One line at a time with POSIX getline (lines may be any length); the buffer is reused.
class LineReader {
 public:
  explicit LineReader(FILE* f) : f_(f) {}
  ~LineReader() { std::free(buf_); }
  // False at the end of the file or on a read error (see error()).
  bool Next(std::string_view* line) {
    ssize_t n = ::getline(&buf_, &cap_, f_);
    if (n < 0) return false;
    size_t len = static_cast<size_t>(n);
    if (len > 0 && buf_[len - 1] == '\n') --len;
    if (len > 0 && buf_[len - 1] == '\r') --len;  // CRLF files
    *line = std::string_view(buf_, len);
    return true;
  }
  bool error() const { return std::ferror(f_) != 0; }

 private:
  FILE* f_;
  char* buf_ = nullptr;
  size_t cap_ = 0;
};

bool IsBlank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n' && c != '\f' && c != '\v') return false;
  }
  return true;
}

const char* JsonTypeName(const ordered_json& v) {
  return v.is_array()     ? "an array"
         : v.is_string()  ? "a string"
         : v.is_number()  ? "a number"
         : v.is_boolean() ? "a boolean"
                          : "null";
}

}  // namespace

Result<DatasetKind> ParseDatasetKind(const std::string& s) {
  if (s == "auto") return DatasetKind::kAuto;
  if (s == "chat") return DatasetKind::kChat;
  if (s == "text") return DatasetKind::kText;
  return Status::Error("unknown dataset kind \"" + s + "\" (expected auto, chat or text)");
}

Result<OnBadSample> ParseOnBadSample(const std::string& s) {
  if (s == "error") return OnBadSample::kError;
  if (s == "skip") return OnBadSample::kSkip;
  return Status::Error("unknown on_bad_sample \"" + s + "\" (expected error or skip)");
}

const char* BadSampleName(BadSample reason) {
  switch (reason) {
    case BadSample::kNotJson:
      return "not JSON";
    case BadSample::kInvalidUtf8:
      return "invalid UTF-8";
    case BadSample::kEmptyLine:
      return "empty line";
    case BadSample::kEmptyObject:
      return "empty object";
    case BadSample::kNotObject:
      return "not an object";
    case BadSample::kMissingField:
      return "missing field";
    case BadSample::kWrongType:
      return "wrong type";
    case BadSample::kUnknownRole:
      return "unknown role";
    case BadSample::kNoAssistant:
      return "no assistant turn";
    case BadSample::kEmptyText:
      return "empty text";
    case BadSample::kRender:
      return "cannot render";
    case BadSample::kCount:
      break;
  }
  return "?";
}

std::string LoadReport::Summary() const {
  std::ostringstream s;
  s << path << ": " << lines << " lines, " << samples << " samples";
  if (skipped == 0) return s.str();
  s << ", " << skipped << " skipped:";
  bool first = true;
  for (size_t r = 0; r < reasons.size(); ++r) {
    const Reason& reason = reasons[r];
    if (reason.count == 0) continue;
    s << (first ? " " : ", ") << reason.count << " " << BadSampleName(static_cast<BadSample>(r))
      << (reason.first_lines.size() == 1 ? " (line " : " (lines ");
    for (size_t k = 0; k < reason.first_lines.size(); ++k) {
      s << (k ? ", " : "") << reason.first_lines[k];
    }
    s << (reason.count > static_cast<int64_t>(reason.first_lines.size()) ? ", ...)" : ")");
    first = false;
  }
  return s.str();
}

Result<std::string> DefaultEosToken(const Tokenizer& tokenizer) {
  for (const char* t : {"<|endoftext|>", "<|end_of_text|>", "<｜end▁of▁sentence｜>", "</s>"}) {
    if (tokenizer.TokenToId(t)) return std::string(t);
  }
  return Status::Error("tokenizer " + tokenizer.source() +
                       " has none of the usual EOS tokens (<|endoftext|>, <|end_of_text|>, "
                       "<｜end▁of▁sentence｜>, </s>); set the EOS token for text datasets");
}

Result<std::string> EosTokenFromConfig(const std::string& tokenizer_config_path) {
  XT_ASSIGN_OR_RETURN(const nlohmann::json j, ReadJsonFile(tokenizer_config_path));
  if (!j.is_object()) return Status::Error(tokenizer_config_path + ": not a JSON object");
  auto it = j.find("eos_token");
  if (it != j.end() && it->is_string()) return it->get<std::string>();
  if (it != j.end() && it->is_object() && it->contains("content") && (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return Status::Error(tokenizer_config_path + ": no \"eos_token\" string");
}

namespace {

// One pass of LoadJsonl: turns lines into samples and remembers the dataset's kind, whether the
// tokenizer was checked and the EOS id.
class LineLoader {
 public:
  LineLoader(const Tokenizer& tokenizer, const ChatTemplate& chat_template,
             const LoadOptions& options, DatasetKind kind)
      : tokenizer_(tokenizer), template_(chat_template), options_(options), kind_(kind) {}

  // One line into `out`. False when the line is rejected (bad() says why) or when something
  // that is not the line's fault failed (fatal() is then an error: never skipped).
  bool Process(std::string_view line, Sample* out) {
    ordered_json j;
    if (!Parse(line, &j)) return false;
    const bool is_chat = j.contains("messages");
    const bool is_text = j.contains("text") || j.contains("content");
    if (kind_ == DatasetKind::kAuto) {
      if (!is_chat && !is_text) {
        return Reject(BadSample::kMissingField, "no \"messages\", \"text\" or \"content\"");
      }
      kind_ = is_chat ? DatasetKind::kChat : DatasetKind::kText;
    }
    if (kind_ == DatasetKind::kChat) {
      if (!is_chat) {
        return Reject(BadSample::kMissingField,
                      is_text ? "a text sample (\"text\" or \"content\") in a chat dataset"
                              : "no \"messages\"");
      }
      return Chat(j, out);
    }
    if (is_chat) {
      return Reject(BadSample::kMissingField, "a chat sample (\"messages\") in a text dataset");
    }
    return Text(j, out);
  }

  const SampleError& bad() const { return bad_; }
  const Status& fatal() const { return fatal_; }
  DatasetKind kind() const { return kind_; }

 private:
  bool Reject(BadSample reason, std::string message) {
    bad_ = {reason, std::move(message)};
    return false;
  }

  // A non-empty JSON object from valid UTF-8, keys in their order.
  bool Parse(std::string_view line, ordered_json* j) {
    if (IsBlank(line)) return Reject(BadSample::kEmptyLine, "empty line");
    if (size_t at = FindInvalidUtf8(line); at != std::string_view::npos) {
      return Reject(BadSample::kInvalidUtf8, "invalid UTF-8 at byte " + std::to_string(at + 1));
    }
    Result<ordered_json> parsed = ParseOrderedJson(line, kMaxSampleDepth);
    if (!parsed.ok()) return Reject(BadSample::kNotJson, parsed.status().message());
    *j = std::move(*parsed);
    if (!j->is_object()) {
      return Reject(BadSample::kNotObject,
                    std::string("expected a JSON object, got ") + JsonTypeName(*j));
    }
    if (j->empty()) return Reject(BadSample::kEmptyObject, "empty object");
    return true;
  }

  bool Chat(const ordered_json& j, Sample* out) {
    Conversation conv;
    if (!ParseChatSample(j, &conv, &bad_)) return false;
    if (!tokenizer_checked_) {
      fatal_ = template_.CheckTokenizer(tokenizer_);
      if (!fatal_.ok()) return false;
      tokenizer_checked_ = true;
    }
    auto encoded = template_.Encode(conv, tokenizer_, options_.train_last_turn_only);
    if (!encoded.ok()) return Reject(BadSample::kRender, encoded.status().message());
    *out = std::move(encoded).value();
    return true;
  }

  bool Text(const ordered_json& j, Sample* out) {
    std::string text;
    if (!ParseTextSample(j, &text, &bad_)) return false;
    if (!eos_id_) {
      std::string eos = options_.eos_token;
      if (eos.empty()) {
        auto def = DefaultEosToken(tokenizer_);
        if (!def.ok()) {
          fatal_ = def.status();
          return false;
        }
        eos = def.value();
      }
      eos_id_ = tokenizer_.TokenToId(eos);
      if (!eos_id_) {
        fatal_ =
            Status::Error("tokenizer " + tokenizer_.source() + " has no EOS token \"" + eos + "\"");
        return false;
      }
    }
    auto ids = tokenizer_.Encode(text, false);
    if (!ids.ok()) return Reject(BadSample::kRender, ids.status().message());
    out->input_ids = std::move(ids).value();
    out->input_ids.push_back(*eos_id_);
    out->labels = out->input_ids;
    return true;
  }

  const Tokenizer& tokenizer_;
  const ChatTemplate& template_;
  const LoadOptions& options_;
  DatasetKind kind_;
  bool tokenizer_checked_ = false;
  std::optional<int32_t> eos_id_;
  SampleError bad_;
  Status fatal_;
};

}  // namespace

Result<std::vector<Sample>> LoadJsonl(const DatasetSpec& spec, const Tokenizer& tokenizer,
                                      const ChatTemplate& chat_template, const LoadOptions& options,
                                      LoadReport* report) {
  LoadReport local;
  LoadReport& rep = report ? *report : local;
  rep = LoadReport();
  rep.path = spec.path;

  std::unique_ptr<FILE, FileCloser> file(std::fopen(spec.path.c_str(), "rb"));
  if (!file) return Status::Error(spec.path + ": cannot open: " + std::strerror(errno));
  int64_t file_size = 0;
  if (std::fseek(file.get(), 0, SEEK_END) == 0) file_size = std::ftell(file.get());
  std::rewind(file.get());
  LineReader reader(file.get());
  LineLoader loader(tokenizer, chat_template, options, spec.kind);
  std::vector<Sample> samples;
  int64_t lineno = 0;

  // What happened to one line; taken in line order by Take().
  struct Outcome {
    bool ok = false;
    Sample sample;
    SampleError bad;
    Status fatal;
  };
  auto take = [&](Outcome& o) -> Status {
    ++lineno;
    ++rep.lines;
    if (o.ok) {
      samples.push_back(std::move(o.sample));
      ++rep.samples;
      return Status::OK();
    }
    const std::string where = spec.path + ":" + std::to_string(lineno);
    if (!o.fatal.ok()) return o.fatal.With(where);
    if (options.on_bad_sample == OnBadSample::kError) {
      return Status::Error(where + ": " + o.bad.message);
    }
    ++rep.skipped;
    LoadReport::Reason& r = rep.reasons[static_cast<size_t>(o.bad.reason)];
    if (r.count == 0) r.first_message = o.bad.message;
    if (r.first_lines.size() < LoadReport::kLinesKept) r.first_lines.push_back(lineno);
    ++r.count;
    return Status::OK();
  };
  auto process = [](LineLoader& l, std::string_view line, Outcome* o) {
    o->ok = l.Process(line, &o->sample);
    if (!o->ok) o->bad = l.bad(), o->fatal = l.fatal();
  };

  // Serially until a good line fixes the dataset's kind (kind auto), so that every later line is
  // judged against it exactly as a serial pass would.
  std::string_view line;
  bool more = true;
  while (loader.kind() == DatasetKind::kAuto && (more = reader.Next(&line))) {
    Outcome o;
    process(loader, line, &o);
    XT_RETURN_IF_ERROR(take(o));
  }
  // Then in blocks, every core on a block.
  constexpr size_t kBlock = 4096;
  std::vector<std::string> block;
  std::vector<Outcome> outcomes;
  int64_t bytes = 0;
  while (more) {
    block.clear();
    while (block.size() < kBlock && (more = reader.Next(&line))) {
      block.emplace_back(line);
      bytes += int64_t(line.size()) + 1;
    }
    outcomes.assign(block.size(), Outcome());
#pragma omp parallel
    {
      LineLoader local = loader;  // per-thread state (lazy checks), same kind
#pragma omp for schedule(dynamic, 16)
      for (size_t i = 0; i < block.size(); ++i) process(local, block[i], &outcomes[i]);
    }
    for (Outcome& o : outcomes) XT_RETURN_IF_ERROR(take(o));
    if (options.progress) options.progress(std::min(bytes, file_size), file_size);
  }
  if (reader.error()) {
    return Status::Error(spec.path + ": read error after line " + std::to_string(lineno) + ": " +
                         std::strerror(errno));
  }
  return samples;
}

}  // namespace xt
