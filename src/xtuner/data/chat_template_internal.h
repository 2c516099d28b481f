// Shared pieces of the chat templates (chat_template_*.cc). Not part of the public API.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/chat_template.h"

namespace xt {

// Collects rendered text into segments, merging neighbours with the same trainable flag and
// dropping empty pieces.
class SegmentWriter {
 public:
  void Prompt(std::string_view text) { Add(text, false); }
  void Train(std::string_view text) { Add(text, true); }
  void Add(std::string_view text, bool trainable);
  std::vector<Segment> Take() { return std::move(segments_); }

 private:
  std::vector<Segment> segments_;
};

// What one template renders, given the conversation and, per message, whether that message's
// output is trained on (false for non-assistant messages and for earlier assistant messages
// under train_last_turn_only), and the template's options (ChatTemplate::options(): complete).
// Errors name the template and the message index.
using RenderFn = Status (*)(const Conversation& conv, const std::vector<bool>& trained,
                            const ChatTemplateOptions& options, SegmentWriter* out);

struct ChatTemplateSpec {
  std::string name;
  RenderFn render;
  // Tokens every render writes: they must be single tokens of the tokenizer.
  std::vector<std::string> required_tokens;
  // Tokens some renders write (thinking, tool calls): checked when the render contains them.
  std::vector<std::string> optional_tokens;
  // Fingerprint of the Jinja source (whitespace runs collapsed to one space): all of `must` and
  // none of `must_not` appear.
  std::vector<std::string> must;
  std::vector<std::string> must_not;
  // Takes ChatTemplateOptions and a "developer" first message (harmony).
  bool harmony = false;
};

// The specs, one per family file.
const ChatTemplateSpec& ChatmlSpec();
const ChatTemplateSpec& Qwen3Spec();
const ChatTemplateSpec& Llama3Spec();
const ChatTemplateSpec& Llama31Spec();
const ChatTemplateSpec& DeepseekV3Spec();
const ChatTemplateSpec& HarmonySpec();

// Python's str.strip() / lstrip() / rstrip() with no argument: Unicode whitespace as
// str.isspace() defines it (Jinja's `trim` filter is str.strip()).
std::string_view PyStrip(std::string_view s);
// Strips only the given ASCII characters from both ends / the left / the right, as
// str.strip(chars) does.
std::string_view StripChars(std::string_view s, std::string_view chars);
std::string_view LStripChars(std::string_view s, std::string_view chars);
std::string_view RStripChars(std::string_view s, std::string_view chars);

// transformers' `tojson` filter: json.dumps(value, ensure_ascii=False, indent=indent), keys in
// their given order. indent < 0 means None: one line with ", " and ": " separators; otherwise
// newlines and `indent` spaces per level with "," and ": ".
std::string PyJsonDumps(const nlohmann::ordered_json& value, int indent = -1);

// "<template>: message <i> (<role>): <msg>"
Status MessageError(const std::string& tmpl, size_t index, const Message& m,
                    const std::string& msg);

// Conversation::tools_json parsed with its key order: nullopt when it is "" or null, an error
// naming the template when it is not valid JSON or not an array.
Result<std::optional<nlohmann::ordered_json>> ParseTools(const std::string& tmpl,
                                                         const std::string& tools_json);

// The Qwen / Hermes function-calling system prompt block, from "# Tools" to the closing
// "</tool_call>" line, with each tool serialised by PyJsonDumps. Used by qwen3 and chatml.
std::string QwenToolsBlock(const nlohmann::ordered_json& tools);

// One Qwen-style tool call: "<tool_call>\n{\"name\": \"NAME\", \"arguments\": ARGS}\n</tool_call>".
std::string QwenToolCall(const ToolCall& call);

}  // namespace xt
