// Helpers shared by the chat templates: segment collection, Python string stripping, and
// transformers' `tojson` (Python json.dumps) serialisation.
#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "xtuner/core/json.h"
#include "xtuner/data/chat_template_internal.h"

namespace xt {

using nlohmann::ordered_json;

void SegmentWriter::Add(std::string_view text, bool trainable) {
  if (text.empty()) return;
  if (!segments_.empty() && segments_.back().trainable == trainable) {
    segments_.back().text.append(text);
  } else {
    segments_.push_back(Segment{std::string(text), trainable});
  }
}

namespace {

bool IsPySpace(uint32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

// Decodes the code point starting at s[i] (the text is valid UTF-8); sets *len to its length.
uint32_t DecodeAt(std::string_view s, size_t i, size_t* len) {
  unsigned char b = s[i];
  int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
  if (i + n > s.size()) n = 1;  // truncated: treat the byte alone (never whitespace)
  uint32_t c = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
  for (int k = 1; k < n; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  *len = n;
  return c;
}

size_t LeadingSpace(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (!IsPySpace(DecodeAt(s, i, &len))) break;
    i += len;
  }
  return i;
}

size_t TrailingSpace(std::string_view s) {
  size_t end = s.size();
  while (end > 0) {
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t len;
    if (!IsPySpace(DecodeAt(s, start, &len)) || start + len != end) break;
    end = start;
  }
  return s.size() - end;
}

// Python's repr of a float, which json.dumps writes: the shortest digits that read back to the
// same double, in fixed notation for decimal exponents -4 to 15 ("0.0001", "1700000000000000.0",
// "1.5") and scientific past them ("1e-05", "5e+22"). (nlohmann's dump differs: it goes
// scientific from 1e15, and its digits are not always the shortest.)
std::string PyFloatRepr(double x) {
  if (std::isnan(x)) return "NaN";
  if (std::isinf(x)) return x < 0 ? "-Infinity" : "Infinity";
  char buf[64];
  const std::to_chars_result r =
      std::to_chars(buf, buf + sizeof buf, x, std::chars_format::scientific);
  std::string s(buf, r.ptr);  // "-1.7e+15", "5e+22", "0e+00"
  const bool negative = s[0] == '-';
  if (negative) s.erase(0, 1);
  const size_t e = s.find('e');
  const int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;  // the value is d.ddd x 10^exp
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits.push_back(s[i]);
  // (Built by append: g++ 12 warns falsely on "literal" + std::string&&, PR 105651.)
  std::string out = negative ? "-" : "";
  if (exp >= 16 || exp < -4) {
    out.append(digits, 0, 1);
    if (digits.size() > 1) out.append(".").append(digits, 1, std::string::npos);
    char tail[16];
    std::snprintf(tail, sizeof tail, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
    out.append(tail);
  } else if (exp >= 0) {
    const size_t int_digits = size_t(exp) + 1;
    out.append(digits, 0, int_digits);
    out.append(int_digits - std::min(int_digits, digits.size()), '0');
    out.append(".");
    if (digits.size() > int_digits) {
      out.append(digits, int_digits, std::string::npos);
    } else {
      out.append("0");
    }
  } else {
    out.append("0.").append(size_t(-exp - 1), '0').append(digits);
  }
  return out;
}

void Indent(std::string* out, int indent, int level) {
  out->push_back('\n');
  out->append(static_cast<size_t>(indent) * level, ' ');
}

void Dump(const ordered_json& v, int indent, int level, std::string* out) {
  switch (v.type()) {
    case ordered_json::value_t::array: {
      if (v.empty()) {
        out->append("[]");
        return;
      }
      out->push_back('[');
      bool first = true;
      for (const auto& item : v) {
        if (!first) out->append(indent < 0 ? ", " : ",");
        if (indent >= 0) Indent(out, indent, level + 1);
        Dump(item, indent, level + 1, out);
        first = false;
      }
      if (indent >= 0) Indent(out, indent, level);
      out->push_back(']');
      return;
    }
    case ordered_json::value_t::object: {
      if (v.empty()) {
        out->append("{}");
        return;
      }
      out->push_back('{');
      bool first = true;
      for (auto it = v.begin(); it != v.end(); ++it) {
        if (!first) out->append(indent < 0 ? ", " : ",");
        if (indent >= 0) Indent(out, indent, level + 1);
        out->append(DumpJson(ordered_json(it.key())));
        out->append(": ");
        Dump(it.value(), indent, level + 1, out);
        first = false;
      }
      if (indent >= 0) Indent(out, indent, level);
      out->push_back('}');
      return;
    }
    case ordered_json::value_t::number_float:
      out->append(PyFloatRepr(v.get<double>()));
      return;
    default:
      // Strings: the same escapes as Python with ensure_ascii=False (\" \\ \b \f \n \r \t and
      // \u00xx for other control characters). Integers and literals print alike.
      out->append(DumpJson(v));
  }
}

}  // namespace

std::string_view PyStrip(std::string_view s) {
  s.remove_prefix(LeadingSpace(s));
  s.remove_suffix(TrailingSpace(s));
  return s;
}

std::string_view LStripChars(std::string_view s, std::string_view chars) {
  size_t i = s.find_first_not_of(chars);
  return i == std::string_view::npos ? std::string_view() : s.substr(i);
}

std::string_view RStripChars(std::string_view s, std::string_view chars) {
  size_t i = s.find_last_not_of(chars);
  return i == std::string_view::npos ? std::string_view() : s.substr(0, i + 1);
}

std::string_view StripChars(std::string_view s, std::string_view chars) {
  return RStripChars(LStripChars(s, chars), chars);
}

std::string PyJsonDumps(const ordered_json& value, int indent) {
  std::string out;
  Dump(value, indent, 0, &out);
  return out;
}

Status MessageError(const std::string& tmpl, size_t index, const Message& m,
                    const std::string& msg) {
  return Status::Error(tmpl + " chat template: message " + std::to_string(index) + " (" + m.role +
                       "): " + msg);
}

Result<std::optional<ordered_json>> ParseTools(const std::string& tmpl,
                                               const std::string& tools_json) {
  if (tools_json.empty()) return std::optional<ordered_json>();
  Result<ordered_json> parsed = ParseOrderedJson(tools_json);
  if (!parsed.ok()) return parsed.status().With(tmpl + " chat template: tools");
  const ordered_json& tools = *parsed;
  if (tools.is_null()) return std::optional<ordered_json>();
  if (!tools.is_array()) {
    return Status::Error(tmpl + " chat template: tools must be a JSON array, got " +
                         DumpJson(tools));
  }
  return std::optional<ordered_json>(std::move(tools));
}

std::string QwenToolsBlock(const ordered_json& tools) {
  std::string s =
      "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
      "You are provided with function signatures within <tools></tools> XML tags:\n<tools>";
  for (const auto& tool : tools) {
    s += "\n";
    s += PyJsonDumps(tool);
  }
  s += "\n</tools>\n\nFor each function call, return a json object with function name and "
       "arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
       "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>";
  return s;
}

std::string QwenToolCall(const ToolCall& call) {
  return "<tool_call>\n{\"name\": \"" + call.name + "\", \"arguments\": " + call.arguments_json +
         "}\n</tool_call>";
}

}  // namespace xt
