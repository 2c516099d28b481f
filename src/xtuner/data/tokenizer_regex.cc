#include "xtuner/data/tokenizer_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <cctype>

#include "xtuner/data/tokenizer_unicode.h"
#include "xtuner/data/tokenizer_unicode_tables.h"

namespace xt::tok {

namespace {

// The inside of a PCRE2 character class that matches what Oniguruma's class `name` matches:
// PCRE2's own class plus the code points of newer Unicode versions (tokenizer_unicode_tables).
std::string OnigClass(const std::string& name) {
  std::string base;
  if (name == "s") {
    base = "";  // the table lists all of Oniguruma's \s
  } else if (name == "w") {
    base = R"(\p{L}\p{M}\p{Nd}\p{Nl}\p{Pc})";
  } else if (name == "d") {
    base = R"(\p{Nd})";
  } else if (name == "h") {
    return "0-9a-fA-F";  // Oniguruma's \h is a hex digit
  } else {
    base = "\\p{" + name + "}";
  }
  for (const OnigExtra* e = kOnigExtra; e->name != nullptr; ++e) {
    if (name == e->name) return base + e->extra;
  }
  return base;
}

bool KnownProperty(const std::string& name) {
  for (const OnigExtra* e = kOnigExtra; e->name != nullptr; ++e) {
    if (name == e->name) return true;
  }
  return false;
}

std::string PcreError(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

std::string EscapeLiteral(std::string_view s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    const bool alnum = (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z');
    if (u < 0x80 && !alnum) out += '\\';
    out += c;
  }
  return out;
}

// Per-thread match state: PCRE2 match data and a JIT stack large enough for long lines.
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(64 << 10, 8 << 20, nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

MatchState& State() {
  thread_local MatchState state;
  return state;
}

}  // namespace

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

std::string TranslateOnigPattern(std::string_view p) {
  std::string out;
  out.reserve(p.size() + 64);
  bool in_class = false;
  // Writes class `name` (negated: its complement) at the current position.
  auto emit_class = [&](const std::string& name, bool negated) {
    const std::string inner = OnigClass(name);
    if (in_class) {
      out += inner;  // callers never pass a negated class here
    } else {
      out += negated ? "[^" : "[";
      out += inner;
      out += ']';
    }
  };
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char e = p[++i];
      const bool lower = e == 's' || e == 'w' || e == 'd' || e == 'h';
      const bool upper = e == 'S' || e == 'W' || e == 'D' || e == 'H';
      if (lower || (upper && !in_class)) {
        emit_class(std::string(1, static_cast<char>(std::tolower(e))), upper);
        continue;
      }
      if ((e == 'p' || e == 'P') && i + 1 < p.size()) {
        // \p{X}, \pX, \P{X}: a general category, with Oniguruma's newer code points.
        std::string name;
        size_t next = i + 1;
        if (p[next] == '{') {
          const size_t close = p.find('}', next);
          if (close != std::string_view::npos) {
            name = std::string(p.substr(next + 1, close - next - 1));
            next = close + 1;
          }
        } else {
          name = std::string(1, p[next]);
          next += 1;
        }
        if (KnownProperty(name) && !(e == 'P' && in_class)) {
          emit_class(name, e == 'P');
          i = next - 1;
          continue;
        }
      }
      out += '\\';
      out += e;
      continue;
    }
    out += c;
    if (!in_class && c == '[') {
      in_class = true;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
      if (i + 1 < p.size() && p[i + 1] == ']') out += p[++i];
    } else if (in_class && c == '[' && i + 1 < p.size() && p[i + 1] == ':') {
      const size_t close = p.find(":]", i + 2);  // POSIX class [:alpha:]
      if (close != std::string_view::npos) {
        out.append(p.substr(i + 1, close + 2 - (i + 1)));
        i = close + 1;
      }
    } else if (in_class && c == ']') {
      in_class = false;
    }
  }
  return out;
}

Result<Regex> Regex::Compile(std::string_view pattern, bool literal) {
  const std::string translated = literal ? EscapeLiteral(pattern) : TranslateOnigPattern(pattern);
  pcre2_compile_context* cc = pcre2_compile_context_create(nullptr);
  pcre2_set_newline(cc, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &err_off, cc);
  pcre2_compile_context_free(cc);
  if (code == nullptr) {
    return Status::Error("regex \"" + std::string(pattern) + "\" does not compile (at offset " +
                         std::to_string(err_off) + " of \"" + translated +
                         "\"): " + PcreError(err));
  }
  auto c = std::make_shared<Code>();
  c->code = code;
  c->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex r;
  r.code_ = std::move(c);
  r.pattern_ = std::string(pattern);
  return r;
}

void Regex::FindMatches(std::string_view s, std::vector<Span>* out) const {
  const size_t n = s.size();
  if (n == 0) {
    out->push_back({0, 0, false});
    return;
  }
  MatchState& st = State();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t last_end = 0, prev = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= n) {
    const int rc = code_->jit
                       ? pcre2_jit_match(code_->code, subject, n, last_end, 0, st.data, st.context)
                       : pcre2_match(code_->code, subject, n, last_end, PCRE2_NO_UTF_CHECK, st.data,
                                     st.context);
    // No match, or a resource limit (JIT stack, match limit): the rest is not a match.
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    const size_t a = ov[0], b = ov[1];
    if (a == b && have_last && last_match_end == b) {
      last_end += last_end < n ? Utf8Len(static_cast<unsigned char>(s[last_end])) : 1;
      continue;
    }
    last_end = b;
    last_match_end = b;
    have_last = true;
    if (prev != a) out->push_back({prev, a, false});
    out->push_back({a, b, true});
    prev = b;
  }
  if (prev != n) out->push_back({prev, n, false});
}

}  // namespace xt::tok
