// Tokenizer: loads tokenizer.json into its components and runs HF's encode and decode
// pipelines over them (see tokenizer.h). The components live in tokenizer_*.h.
#include "xtuner/data/tokenizer.h"

#include <array>
#include <atomic>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <unordered_map>
#include <unordered_set>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/data/tokenizer_added.h"
#include "xtuner/data/tokenizer_bpe.h"
#include "xtuner/data/tokenizer_decoder.h"
#include "xtuner/data/tokenizer_json.h"
#include "xtuner/data/tokenizer_normalizer.h"
#include "xtuner/data/tokenizer_postprocessor.h"
#include "xtuner/data/tokenizer_pretokenizer.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace xt {

using tok::AddedToken;
using tok::AddedTokenMatcher;

struct Tokenizer::Impl {
  std::string source;
  uint64_t uid = 0;  // tells the per-thread caches of different tokenizers apart
  tok::BpeModel model;
  std::unique_ptr<tok::Normalizer> normalizer;
  tok::PreTokenizer pre_tokenizer;
  tok::PostProcessor post_processor;
  std::unique_ptr<tok::Decoder> decoder;

  // Added tokens, as HF's AddedVocabulary.
  std::vector<std::unique_ptr<AddedToken>> added;  // every accepted token, in file order
  std::unordered_map<std::string, int32_t> added_ids;
  std::unordered_map<int32_t, const AddedToken*> added_by_id;
  std::unordered_set<std::string> special;
  AddedTokenMatcher raw_matcher;         // tokens with normalized == false, on the raw text
  AddedTokenMatcher normalized_matcher;  // tokens with normalized == true, after normalization
  int64_t vocab_size = 0;

  int32_t TokenToId(std::string_view t) const {
    auto it = added_ids.find(std::string(t));
    return it != added_ids.end() ? it->second : model.TokenToId(t);
  }
  const std::string* IdToToken(int32_t id) const {
    auto it = added_by_id.find(id);
    return it != added_by_id.end() ? &it->second->as_decoded : model.IdToToken(id);
  }
  Status LoadAddedTokens(const nlohmann::json& list);
};

namespace {

// Per-thread working state of Encode for one tokenizer: the BPE word cache and scratch buffers.
struct EncodeState {
  uint64_t owner = 0;
  tok::BpeCache cache;
  tok::PreTokenizerScratch pre;
  std::string norm, tmp;
  std::vector<AddedTokenMatcher::Piece> pieces, norm_pieces;
};

EncodeState& StateFor(uint64_t uid) {
  constexpr size_t kSlots = 4;
  thread_local std::array<std::unique_ptr<EncodeState>, kSlots> slots;
  thread_local size_t next = 0;
  for (auto& s : slots) {
    if (s && s->owner == uid) return *s;
  }
  auto& s = slots[next++ % kSlots];
  s = std::make_unique<EncodeState>();
  s->owner = uid;
  return *s;
}

std::atomic<uint64_t> g_next_uid{1};

}  // namespace

// HF's AddedVocabulary::add_tokens for the "added_tokens" list: ids come from the vocabulary
// (a token already there keeps its id) or follow the largest one; the file's "id" is advisory.
Status Tokenizer::Impl::LoadAddedTokens(const nlohmann::json& list) {
  if (list.is_null()) return Status::OK();
  if (!list.is_array()) return Status::Error("\"added_tokens\" is not a list");
  std::vector<const AddedToken*> specials, others;
  std::unordered_set<std::string> seen;
  std::string scratch;
  int64_t max_added = -1;
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& j = list[i];
    const std::string where = "added_tokens[" + std::to_string(i) + "]";
    if (!j.is_object() || !j.contains("content") || !j["content"].is_string()) {
      return Status::Error(where + ": expected an object with a \"content\" string");
    }
    auto t = std::make_unique<AddedToken>();
    t->content = j["content"].get<std::string>();
    XT_ASSIGN_OR_RETURN(t->single_word, tok::Field<bool>(j, "single_word", where, false));
    XT_ASSIGN_OR_RETURN(t->lstrip, tok::Field<bool>(j, "lstrip", where, false));
    XT_ASSIGN_OR_RETURN(t->rstrip, tok::Field<bool>(j, "rstrip", where, false));
    XT_ASSIGN_OR_RETURN(t->normalized, tok::Field<bool>(j, "normalized", where, true));
    XT_ASSIGN_OR_RETURN(t->special, tok::Field<bool>(j, "special", where, false));
    if (t->content.empty()) continue;
    t->as_decoded = t->content;
    if (t->normalized && normalizer) normalizer->Apply(&t->as_decoded, &scratch);
    if (t->special && special.insert(t->content).second) specials.push_back(t.get());
    // A token equal in every field to one already added is ignored.
    std::string key = t->content;
    for (bool f : {t->single_word, t->lstrip, t->rstrip, t->normalized, t->special}) {
      key += f ? '1' : '0';
    }
    if (!seen.insert(std::move(key)).second) continue;
    int32_t id = TokenToId(t->content);
    if (id < 0) {
      const auto n = static_cast<int64_t>(model.vocab_entries());
      const int64_t next = max_added < 0 ? n : (max_added >= n || n == 0) ? max_added + 1 : n;
      if (next >= INT32_MAX) return Status::Error(where + ": too many added tokens");
      id = static_cast<int32_t>(next);
    }
    added_ids[t->content] = id;
    max_added = std::max<int64_t>(max_added, id);
    added_by_id[id] = t.get();
    if (!special.count(t->content)) others.push_back(t.get());
    added.push_back(std::move(t));
  }
  // The matchers (HF's refresh_added_tokens): special tokens first, then the others.
  for (const auto* list2 : {&specials, &others}) {
    for (const AddedToken* t : *list2) {
      const int32_t id = TokenToId(t->content);
      const AddedToken* flags = added_by_id.count(id) ? added_by_id[id] : t;
      if (!t->normalized) {
        raw_matcher.Add(t->content, id, flags);
        continue;
      }
      normalized_matcher.Add(t->as_decoded, id, flags);
    }
  }
  return Status::OK();
}

std::string TokenizerJsonPath(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec)) return path;
  return (std::filesystem::path(path) / "tokenizer.json").string();
}

Result<Tokenizer> Tokenizer::FromFile(const std::string& path) {
  const std::string file = TokenizerJsonPath(path);
  XT_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(file));
  return FromJson(text, file);
}

Result<Tokenizer> Tokenizer::FromJson(std::string_view json_text, const std::string& source) {
  JsonLimits limits;
  limits.max_depth = 64;  // a tokenizer.json needs a handful of levels
  Result<nlohmann::json> parsed = ParseJson(json_text, limits);
  if (!parsed.ok()) return parsed.status().With(source);
  const nlohmann::json& j = *parsed;
  if (!j.is_object()) return Status::Error(source + ": not a JSON object");
  auto impl = std::make_shared<Impl>();
  impl->source = source;
  impl->uid = g_next_uid.fetch_add(1);
  auto component = [&](const char* key) -> const nlohmann::json& {
    static const nlohmann::json kNull;
    auto it = j.find(key);
    return it == j.end() ? kNull : *it;
  };
  {
    auto r = tok::BpeModel::Parse(component("model"));
    if (!r.ok()) return r.status().With(source);
    impl->model = std::move(r).value();
  }
  {
    auto r = tok::ParseNormalizer(component("normalizer"));
    if (!r.ok()) return r.status().With(source);
    impl->normalizer = std::move(r).value();
  }
  {
    auto r = tok::PreTokenizer::Parse(component("pre_tokenizer"));
    if (!r.ok()) return r.status().With(source);
    impl->pre_tokenizer = std::move(r).value();
  }
  {
    auto r = tok::PostProcessor::Parse(component("post_processor"));
    if (!r.ok()) return r.status().With(source);
    impl->post_processor = std::move(r).value();
  }
  {
    auto r = tok::ParseDecoder(component("decoder"));
    if (!r.ok()) return r.status().With(source);
    impl->decoder = std::move(r).value();
  }
  XT_RETURN_IF_ERROR(impl->LoadAddedTokens(component("added_tokens")).With(source));
  impl->vocab_size = impl->model.max_id() + 1;
  for (const auto& [id, t] : impl->added_by_id) {
    impl->vocab_size = std::max<int64_t>(impl->vocab_size, int64_t{id} + 1);
  }
  for (const auto* ids : {&impl->post_processor.prefix, &impl->post_processor.suffix}) {
    for (int32_t id : *ids) {
      if (impl->IdToToken(id) == nullptr) {
        return Status::Error(source + ": post_processor adds id " + std::to_string(id) +
                             ", which is not in the vocabulary");
      }
    }
  }
  return Tokenizer(std::move(impl));
}

Result<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                               bool add_special_tokens) const {
  const Impl& m = *impl_;
  size_t bad = 0;
  if (!tok::IsValidUtf8(text, &bad)) {
    return Status::Error(m.source + ": text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
  }
  EncodeState& st = StateFor(m.uid);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  if (add_special_tokens) ids = m.post_processor.prefix;
  bool unk_ok = true;
  const bool raw = m.pre_tokenizer.raw_bytes();
  auto to_model = [&](std::string_view word, bool) {
    unk_ok &= m.model.Tokenize(word, raw, &st.cache, &ids);
  };
  auto pre_tokenize = [&](std::string_view s, bool at_origin) {
    m.pre_tokenizer.Run(s, at_origin, &st.pre, to_model);
  };
  // A piece of raw text between added tokens: normalize, find normalized added tokens, go on.
  auto normalize = [&](std::string_view s, bool at_origin) {
    if (m.normalizer) {
      st.norm.assign(s);
      m.normalizer->Apply(&st.norm, &st.tmp);
      s = st.norm;
      if (s.empty()) return;
    }
    if (m.normalized_matcher.empty()) return pre_tokenize(s, at_origin);
    st.norm_pieces.clear();
    m.normalized_matcher.Split(s, &st.norm_pieces);
    for (const auto& p : st.norm_pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else if (p.end > p.start) {
        pre_tokenize(s.substr(p.start, p.end - p.start), at_origin && p.start == 0);
      }
    }
  };
  if (m.raw_matcher.empty()) {
    if (!text.empty()) normalize(text, true);
  } else {
    st.pieces.clear();
    m.raw_matcher.Split(text, &st.pieces);
    for (const auto& p : st.pieces) {
      if (p.id >= 0) {
        ids.push_back(p.id);
      } else if (p.end > p.start) {
        normalize(text.substr(p.start, p.end - p.start), p.start == 0);
      }
    }
  }
  if (!unk_ok) {
    return Status::Error(m.source + ": the text needs unk_token, which is not in the vocabulary");
  }
  if (add_special_tokens) {
    ids.insert(ids.end(), m.post_processor.suffix.begin(), m.post_processor.suffix.end());
  }
  return ids;
}

Result<std::string> Tokenizer::Decode(const std::vector<int32_t>& ids,
                                      bool skip_special_tokens) const {
  const Impl& m = *impl_;
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* t = m.IdToToken(id);
    if (t == nullptr) {
      return Status::Error(m.source + ": id " + std::to_string(id) + " is not in the vocabulary");
    }
    if (skip_special_tokens && m.special.count(*t)) continue;
    tokens.push_back(*t);
  }
  std::string text;
  if (m.decoder) {
    m.decoder->DecodeChain(&tokens);
    for (const auto& t : tokens) text += t;
  } else {
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) text += ' ';
      text += tokens[i];
    }
  }
  return text;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  const int32_t id = impl_->TokenToId(token);
  return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
}

std::string Tokenizer::IdToToken(int32_t id) const {
  const std::string* t = impl_->IdToToken(id);
  return t ? *t : std::string();
}

int64_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

bool Tokenizer::IsSpecial(int32_t id) const {
  const std::string* t = impl_->IdToToken(id);
  return t != nullptr && impl_->special.count(*t) > 0;
}

const std::string& Tokenizer::source() const { return impl_->source; }

}  // namespace xt
