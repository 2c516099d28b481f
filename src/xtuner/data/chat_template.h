// Chat templates: how a conversation becomes the text (and the token ids and labels) a chat model
// is trained on. Each template is built in, chosen by name, and reproduces what the model's own
// Jinja `chat_template` (as transformers' apply_chat_template runs it, without a generation
// prompt) renders for a training conversation. The source followed and every deliberate
// difference are written at the top of each template's file (chat_template_<family>.cc).
//
//   name          source template                                     file
//   chatml        the plain ChatML template (+ Qwen-style tools)      chat_template_chatml.cc
//   qwen3         Qwen/Qwen3-* (hybrid thinking)                      chat_template_qwen3.cc
//   llama3        meta-llama/Meta-Llama-3-8B-Instruct (Llama 3.0)     chat_template_llama3.cc
//   llama3.1      meta-llama/Llama-3.1-8B-Instruct (also 3.2, 3.3)    chat_template_llama3.cc
//   deepseek-v3   deepseek-ai/DeepSeek-V3-0324                        chat_template_deepseek.cc
//   harmony       openai/gpt-oss-20b, -120b (GPT-OSS's harmony format) chat_template_harmony.cc
//
// Rendering is for training only: no generation prompt is ever appended. Labels are -100
// everywhere except the assistant's own output: its content, thinking and tool calls and the
// end-of-turn token that closes it (never the role header that opens it, nor the newline after
// the end-of-turn token; harmony's headers inside a turn, between its analysis and its answer or
// call, are trained: GPT-OSS writes them itself). What a source template would silently drop from
// the trained text (a `thinking` the template has no place for, the content beside a Llama 3.1 tool
// call) is an error instead; what it drops from the prompt side (tool definitions in DeepSeek-V3)
// is dropped alike.
//
// ChatTemplate objects are cheap to copy and immutable; all methods are thread-safe.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "xtuner/core/status.h"
#include "xtuner/data/sample.h"
#include "xtuner/data/tokenizer.h"

namespace xt {

struct ToolCall {
  std::string name;
  // The arguments as JSON text. Rendered verbatim where the source template pastes a string
  // (qwen3, chatml, deepseek-v3); llama3.1 re-serialises it as its `tojson` filter would.
  std::string arguments_json;
};

struct Message {
  // "system", "user", "assistant" or "tool"; "developer" (harmony only) as the first message.
  std::string role;
  std::string content;   // may be empty (an assistant turn that only calls tools)
  std::string thinking;  // assistant only: the reasoning (OpenAI's reasoning_content); "" = none
  std::vector<ToolCall> tool_calls;  // assistant only
  std::string name;                  // optional (a tool message's function name); not rendered
};

struct Conversation {
  std::vector<Message> messages;
  // Optional: the OpenAI `tools` array (function definitions) as JSON text; "" = no tools. Key
  // order is kept as written (templates serialise it like Python's json.dumps).
  std::string tools_json;
};

// One rendered piece of text. Concatenating the segments of a render gives the full text;
// adjacent segments differ in `trainable`.
struct Segment {
  std::string text;
  bool trainable = false;
};

// What the harmony template takes besides the conversation (its Jinja's kwargs). The other
// templates take none: a non-empty field with them is an error.
struct ChatTemplateOptions {
  std::string reasoning_effort;  // low | medium | high; "": medium
  // The system message's first line; "": "You are ChatGPT, a large language model trained by
  // OpenAI."
  std::string model_identity;
  // The system message's "Current date:", YYYY-MM-DD; "": today's local date, when the template
  // is made (transformers' strftime_now renders the date of each call).
  std::string current_date;

  // The values given are valid (empty ones are): an error "<prefix>reasoning_effort ..." or
  // "<prefix>current_date ..." otherwise.
  Status Check(const std::string& prefix) const;
  // None is given unless `template_name` is harmony's: an error naming the first one given
  // ("<prefix>reasoning_effort ("low") is an option of the harmony chat template; ...").
  Status CheckTakenBy(const std::string& template_name, const std::string& prefix) const;
};

struct ChatTemplateSpec;  // chat_template_internal.h

class ChatTemplate {
 public:
  // The template of that name, with its options; an unknown name is an error that lists the
  // names, and a bad option (or any option for a template without options) an error naming it.
  static Result<ChatTemplate> ByName(const std::string& name,
                                     const ChatTemplateOptions& options = {});
  // The built-in names, in the order above.
  static std::vector<std::string> Names();

  // For "auto": recognises the model's template in a tokenizer_config.json (`path` is the file,
  // or a directory holding it). Its "chat_template" may be a string or a list of {name, template}
  // (the one named "default" is used); when it has none, a chat_template.jinja beside it is read.
  // Recognition is by fingerprint (the pieces of Jinja that decide what is rendered), so a
  // template that renders differently (Qwen2.5's default system prompt, DeepSeek-R1's </think>
  // stripping, Qwen3-Coder's XML tool calls) is an error that names the file and lists the names.
  static Result<std::string> DetectName(const std::string& tokenizer_config_path);
  // The same recognition on the Jinja text itself; `source` names it in errors.
  static Result<std::string> DetectNameFromJinja(std::string_view jinja, const std::string& source);

  const std::string& name() const;
  // The options in use: as given, with harmony's defaults and today's date filled in.
  const ChatTemplateOptions& options() const { return options_; }

  // Renders the whole conversation (no generation prompt). With train_last_turn_only, only the
  // last assistant message is trainable. Errors (bad role, a thinking or tool call the template
  // cannot render, invalid tools_json or tool arguments) name the message index.
  Result<std::vector<Segment>> Render(const Conversation& conversation,
                                      bool train_last_turn_only) const;

  // Render, then tokenize each segment on its own (no post-processor: the templates write BOS
  // themselves) and concatenate; labels are the ids of trainable segments and -100 elsewhere.
  // Every special token the render uses (BOS, role markers, end of turn, think and tool markers)
  // must be one token of `tokenizer`: otherwise an error naming the token and the tokenizer.
  // Segments end at special tokens or right after a role header's newline, so the ids equal those
  // of encoding the whole text unless a turn's content starts with whitespace that the
  // pre-tokenizer would merge with that newline.
  Result<Sample> Encode(const Conversation& conversation, const Tokenizer& tokenizer,
                        bool train_last_turn_only) const;

  // Checks that the tokens every render of this template uses exist in `tokenizer` (done by
  // Encode too; call it once up front to fail before reading a dataset).
  Status CheckTokenizer(const Tokenizer& tokenizer) const;

 private:
  ChatTemplate(const ChatTemplateSpec* spec, ChatTemplateOptions options)
      : spec_(spec), options_(std::move(options)) {}
  const ChatTemplateSpec* spec_;
  ChatTemplateOptions options_;
};

}  // namespace xt
