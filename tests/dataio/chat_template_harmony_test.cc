// The harmony chat template (GPT-OSS): exact renders and masks, its options, its errors, its
// generation prompt and answers. Its agreement with transformers on the real template is checked
// with the other templates' (chat_template_test.cc, expected.json).
#include <gtest/gtest.h>

#include <ctime>

#include "dataio/chat_test_util.h"
#include "util/testing.h"
#include "xtuner/data/chat_prompt.h"
#include "xtuner/data/chat_template.h"

namespace xt {
namespace {

ChatTemplate Harmony(ChatTemplateOptions o = {}) {
  if (o.current_date.empty()) o.current_date = "2025-08-05";
  auto t = ChatTemplate::ByName("harmony", o);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return *t;
}

std::string Render(const Conversation& c, bool last_only = false) {
  auto segs = Harmony().Render(c, last_only);
  EXPECT_TRUE(segs.ok()) << segs.status().message();
  return segs.ok() ? Show(*segs) : "";
}

std::string RenderError(const Conversation& c) {
  auto segs = Harmony().Render(c, false);
  EXPECT_FALSE(segs.ok()) << "rendered " << Show(*segs);
  return segs.ok() ? "" : segs.status().message();
}

const char* kSystem =
    "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Knowledge cutoff: 2024-06\nCurrent date: 2025-08-05\n\nReasoning: medium\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every "
    "message.<|end|>";

// A tool call whose thinking is dropped (a final answer follows), its result, an answer, a new
// question, and an answer with thinking.
const char* kConversation = R"({"messages": [
  {"role": "system", "content": "You are a helpful assistant."},
  {"role": "user", "content": "What's the weather in Paris?"},
  {"role": "assistant", "content": null, "reasoning_content": "I should call the tool.",
   "tool_calls": [{"type": "function",
                   "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
  {"role": "tool", "name": "get_weather", "content": "sunny, 21 °C"},
  {"role": "assistant", "content": "Sunny and 21 °C.", "thinking": "dropped: not the last turn"},
  {"role": "user", "content": "Thanks! And 2+2?"},
  {"role": "assistant", "content": "4", "thinking": "2+2=4"}]})";

TEST(HarmonyTemplate, RendersChannelsToolCallsAndMasks) {
  EXPECT_EQ(Render(Conv(kConversation)),
            std::string(kSystem) +
                "<|start|>developer<|message|># Instructions\n\nYou are a helpful assistant."
                "\n\n<|end|>"
                "<|start|>user<|message|>What's the weather in Paris?<|end|>"
                "<|start|>assistant[[ to=functions.get_weather<|channel|>commentary json"
                "<|message|>{\"city\": \"Paris\"}<|call|>]]"
                "<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>"
                "\"sunny, 21 °C\"<|end|>"
                "<|start|>assistant[[<|channel|>final<|message|>Sunny and 21 °C.<|end|>]]"
                "<|start|>user<|message|>Thanks! And 2+2?<|end|>"
                "<|start|>assistant[[<|channel|>analysis<|message|>2+2=4<|end|>"
                "<|start|>assistant<|channel|>final<|message|>4<|return|>]]");
}

TEST(HarmonyTemplate, TrainLastTurnOnly) {
  const std::string s = Render(Conv(kConversation), /*last_only=*/true);
  EXPECT_EQ(s.find("[["), s.rfind("[["));
  EXPECT_NE(s.find("<|start|>assistant[[<|channel|>analysis<|message|>2+2=4<|end|>"),
            std::string::npos)
      << s;
}

TEST(HarmonyTemplate, KeepsTheAnalysisOfAToolCallUntilAFinalAnswer) {
  // The conversation ends in the tool's result: the call's analysis stays, and is trained.
  EXPECT_EQ(Render(Conv(R"({"messages": [
      {"role": "developer", "content": "Use tools."},
      {"role": "user", "content": "Q"},
      {"role": "assistant", "content": "Let me look.",
       "tool_calls": [{"function": {"name": "f", "arguments": {"b": [1, 2.5, "ü"]}}}]},
      {"role": "tool", "content": "r1"},
      {"role": "tool", "content": "r2"}]})")),
            std::string(kSystem) +
                "<|start|>developer<|message|># Instructions\n\nUse tools.\n\n<|end|>"
                "<|start|>user<|message|>Q<|end|>"
                "<|start|>assistant[[<|channel|>analysis<|message|>Let me look.<|end|>"
                "<|start|>assistant to=functions.f<|channel|>commentary json<|message|>"
                "{\"b\": [1, 2.5, \"ü\"]}<|call|>]]"
                "<|start|>functions.f to=assistant<|channel|>commentary<|message|>\"r1\"<|end|>"
                "<|start|>functions.f to=assistant<|channel|>commentary<|message|>\"r2\"<|end|>");
}

TEST(HarmonyTemplate, DropsLaterSystemMessagesAndTheirEmptyDeveloperBlock) {
  EXPECT_EQ(Render(Conv(R"({"messages": [
      {"role": "system", "content": ""},
      {"role": "user", "content": "Hi"},
      {"role": "developer", "content": "dropped"},
      {"role": "system", "content": "dropped too"},
      {"role": "assistant", "content": "Hello"}]})")),
            std::string(kSystem) +
                "<|start|>user<|message|>Hi<|end|>"
                "<|start|>assistant[[<|channel|>final<|message|>Hello<|return|>]]");
}

TEST(HarmonyTemplate, Options) {
  ChatTemplateOptions o;
  o.reasoning_effort = "high";
  o.model_identity = "You are Tutor.";
  o.current_date = "2024-02-29";
  auto t = ChatTemplate::ByName("harmony", o);
  ASSERT_TRUE(t.ok()) << t.status().message();
  auto segs = t->Render(Conv(R"({"messages": [{"role": "assistant", "content": "A"}]})"), false);
  ASSERT_TRUE(segs.ok()) << segs.status().message();
  EXPECT_EQ(Concat(*segs),
            "<|start|>system<|message|>You are Tutor.\nKnowledge cutoff: 2024-06\nCurrent date: "
            "2024-02-29\n\nReasoning: high\n\n# Valid channels: analysis, commentary, final. "
            "Channel must be included for every message.<|end|>"
            "<|start|>assistant<|channel|>final<|message|>A<|return|>");

  // The defaults: medium, ChatGPT, and today's local date (read on both sides of the call).
  auto today = [] {
    std::time_t now = std::time(nullptr);
    std::tm tm{};
    localtime_r(&now, &tm);
    char buf[16];
    std::strftime(buf, sizeof buf, "%Y-%m-%d", &tm);
    return std::string(buf);
  };
  const std::string before = today();
  auto d = ChatTemplate::ByName("harmony");
  const std::string after = today();
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->options().reasoning_effort, "medium");
  EXPECT_EQ(d->options().model_identity,
            "You are ChatGPT, a large language model trained by OpenAI.");
  EXPECT_TRUE(d->options().current_date == before || d->options().current_date == after)
      << d->options().current_date;

  // {reasoning_effort, model_identity, current_date}
  auto error = [](ChatTemplateOptions bad, const std::string& name = "harmony") {
    auto r = ChatTemplate::ByName(name, bad);
    EXPECT_FALSE(r.ok());
    return r.ok() ? "" : r.status().message();
  };
  EXPECT_EQ(error({"max", "", ""}),
            "harmony chat template: reasoning_effort \"max\" is not low, medium or high");
  for (const char* date : {"2025-02-29", "2025-8-05", "today", "2025-13-01", "0000-01-01"})
    EXPECT_EQ(error({"", "", date}), std::string("harmony chat template: current_date \"") + date +
                                         "\" is not a date written YYYY-MM-DD");
  EXPECT_EQ(error({"low", "", ""}, "qwen3"),
            "reasoning_effort (\"low\") is an option of the harmony chat template; the chat "
            "template is qwen3");
  EXPECT_EQ(error({"", "", "2025-08-05"}, "llama3.1"),
            "current_date (\"2025-08-05\") is an option of the harmony chat template; the chat "
            "template is llama3.1");
}

// Empty strings are false to Jinja: an empty description is not printed, an empty enum, oneOf,
// properties or required is none.
TEST(HarmonyTemplate, EmptyStringsInSchemasAreFalse) {
  auto segs = Harmony().Render(
      Conv(R"({"tools": [{"function": {"name": "f", "description": "d", "parameters": {
          "required": "", "properties": {
            "a": {"type": "string", "description": "", "nullable": ""},
            "b": {"type": "string", "enum": ""},
            "c": {"type": "object", "properties": ""},
            "d": {"oneOf": [{"type": "string", "description": ""}, {"type": "number"}]}}}}}],
          "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"}]})"),
      false);
  ASSERT_TRUE(segs.ok()) << segs.status().message();
  const std::string text = Concat(*segs);
  EXPECT_NE(text.find("type f = (_: {\na?: string,\nb?: string,\nc?: object,\nd?: string | \n"
                      "number,\n}) => any;"),
            std::string::npos)
      << text;
}

TEST(HarmonyTemplate, TheDeveloperRoleIsHarmonys) {
  Conversation c = Conv(R"({"messages": [{"role": "developer", "content": "D"},
      {"role": "user", "content": "U"}, {"role": "assistant", "content": "A"}]})");
  auto r = ChatTemplate::ByName("qwen3")->Render(c, false);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "qwen3 chat template: message 0 (developer): the developer role is harmony's "
            "(GPT-OSS); the qwen3 template has none: make it a system message");
}

TEST(HarmonyTemplate, RefusesWhatItCannotRender) {
  auto has = [](const std::string& msg, const std::string& part) {
    EXPECT_NE(msg.find(part), std::string::npos) << msg;
  };
  has(RenderError(Conv(R"({"messages": [{"role": "user", "content": "Q"},
      {"role": "assistant", "content": "A", "thinking": "<|channel|>analysis<|message|>x"}]})")),
      "harmony chat template: message 1 (assistant): its thinking holds <|channel|> tags");
  has(RenderError(Conv(R"({"messages": [{"role": "user", "content": "Q"},
      {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "f", "arguments": {}}},
        {"function": {"name": "g", "arguments": {}}}]}]})")),
      "message 1 (assistant): harmony renders one tool call per message");
  has(RenderError(Conv(R"({"messages": [{"role": "user", "content": "Q"},
      {"role": "tool", "content": "r"}, {"role": "assistant", "content": "A"}]})")),
      "message 1 (tool): a tool result needs an earlier assistant message with a tool call");
  // Tools the template cannot print.
  const char* messages = R"("messages": [{"role": "user", "content": "Q"},
                                         {"role": "assistant", "content": "A"}])";
  auto tools_error = [&](const std::string& tools) {
    return RenderError(Conv(testing::OrderedJson("{\"tools\": " + tools + ", " + messages + "}")));
  };
  has(tools_error(R"([{"name": "f", "description": "flat, without \"function\""}])"),
      "harmony chat template: tools[0] has no \"function\" object");
  has(tools_error(R"([{"function": {"name": "f"}}])"),
      "tools[0].function has no \"description\", which the template renders");
  has(tools_error(R"([{"function": {"name": "f", "description": 7}}])"),
      "tools[0].function.description must be a string, got 7");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {"type": "string", "enum": ["a", 1.5]}}}}}])"),
      "tools[0].function.parameters.properties.x.enum holds 1.5, which it cannot print");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {"type": "string", "enum": ["a"], "default": 3}}}}}])"),
      "properties.x.default (of an enum) must be a string, got 3");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {"type": "object", "properties": ["y"]}}}}}])"),
      "tools[0].function.parameters.properties.x.properties must be an object");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {}}, "required": "x"}}}])"),
      "tools[0].function.parameters.required must be an array");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {"type": "string", "enum": "ab"}}}}}])"),
      "tools[0].function.parameters.properties.x.enum must be an array");
  has(tools_error(R"([{"function": {"name": "f", "description": "d", "parameters": {
          "properties": {"x": {"oneOf": {"type": "string"}}}}}}])"),
      "tools[0].function.parameters.properties.x.oneOf must be an array");
}

TEST(HarmonyTemplate, EncodeTrainsFromTheChannelNotTheHeader) {
  auto tok = Tokenizer::FromFile(testing::DataPath("tokenizers/chat_gpt_oss/tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  auto s = Harmony().Encode(Conv(R"({"messages": [{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": "Hello", "thinking": "Greet back."}]})"),
                            *tok, false);
  ASSERT_TRUE(s.ok()) << s.status().message();
  std::vector<int32_t> trained;
  size_t first = s->labels.size();
  for (size_t i = 0; i < s->labels.size(); ++i) {
    if (s->labels[i] == -100) continue;
    first = std::min(first, i);
    trained.push_back(s->labels[i]);
  }
  ASSERT_FALSE(trained.empty());
  EXPECT_EQ(s->input_ids.size() - first, trained.size());  // one trained run, to the end
  EXPECT_EQ(tok->Decode(trained, false).value(),
            "<|channel|>analysis<|message|>Greet back.<|end|><|start|>assistant<|channel|>final"
            "<|message|>Hello<|return|>");
  EXPECT_EQ(
      tok->Decode({s->input_ids.begin() + first - 2, s->input_ids.begin() + first}, false).value(),
      "<|start|>assistant");
}

TEST(HarmonyTemplate, GenerationPromptAndAnswer) {
  auto tok = Tokenizer::FromFile(testing::DataPath("tokenizers/chat_gpt_oss/tokenizer.json"));
  ASSERT_TRUE(tok.ok()) << tok.status().message();
  const ChatTemplate t = Harmony();
  auto prompt = EncodeGenerationPrompt(t, *tok, Conv(R"({"messages": [
      {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
      {"role": "user", "content": "3+3?"}]})"));
  ASSERT_TRUE(prompt.ok()) << prompt.status().message();
  // The earlier answer closes with <|end|>; the prompt ends in the assistant's header.
  EXPECT_EQ(tok->Decode(*prompt, false).value(),
            std::string(kSystem) +
                "<|start|>user<|message|>2+2?<|end|><|start|>assistant<|channel|>final"
                "<|message|>4<|end|><|start|>user<|message|>3+3?<|end|><|start|>assistant");
  EXPECT_EQ(EndOfTurnToken("harmony").value(), "<|return|>");

  auto answer = [&](const std::string& generated, const ChatTemplate& tmpl) {
    return DecodeAnswer(tmpl, *tok, tok->Encode(generated, false).value()).value();
  };
  EXPECT_EQ(answer("<|channel|>analysis<|message|>Add.<|end|><|start|>assistant<|channel|>final"
                   "<|message|> 6 <|return|>",
                   t),
            " 6 ");
  EXPECT_EQ(answer("<|channel|>final<|message|>6", t), "6");  // cut at max_new_tokens
  EXPECT_EQ(answer("<|channel|>analysis<|message|>Hmm.<|end|>", t), "");
  // What the model made up past its answer is not the answer: a next turn, a tool's result.
  EXPECT_EQ(answer("<|channel|>final<|message|>4<|end|><|start|>user<|message|>3+3?<|end|>"
                   "<|start|>assistant<|channel|>final<|message|>6<|return|>",
                   t),
            "4");
  EXPECT_EQ(answer("<|channel|>final<|message|>4<|endoftext|>junk", t), "4");
  EXPECT_EQ(answer(" to=functions.f<|channel|>commentary json<|message|>{}<|call|><|start|>"
                   "functions.f to=assistant<|channel|>commentary<|message|>\"6\"<|end|>"
                   "<|start|>assistant<|channel|>final<|message|>6",
                   t),
            "");
  EXPECT_EQ(StopTokens("harmony"),
            (std::vector<std::string>{"<|return|>", "<|call|>", "<|endoftext|>"}));
  EXPECT_EQ(StopTokens("qwen3"), std::vector<std::string>{"<|im_end|>"});
  // The other templates' answers are the text without special tokens.
  EXPECT_EQ(answer("<|channel|>final<|message|>6<|return|>", *ChatTemplate::ByName("chatml")),
            "final6");
}

// A harmony template other than GPT-OSS's is named as such, not taken for it.
TEST(HarmonyTemplate, AnotherHarmonyTemplateIsNotRecognised) {
  auto r = ChatTemplate::DetectNameFromJinja(
      "{%- for message in messages -%}<|start|>{{ message.role }}<|channel|>final<|message|>"
      "{{ message.content }}<|end|>{%- endfor -%}",
      "tokenizer_config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "tokenizer_config.json: the chat template is a harmony format (<|start|>, "
            "<|channel|>, <|message|>) that renders differently from openai/gpt-oss's, which the "
            "built-in \"harmony\" template reproduces; name it only if the model was trained "
            "with GPT-OSS's own template");
}

}  // namespace
}  // namespace xt
