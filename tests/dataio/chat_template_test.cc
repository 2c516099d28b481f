// Chat templates: exact renders and masks per template, agreement with transformers'
// apply_chat_template on the real Jinja templates (tests/data/tokenizers/chat_templates/
// expected.json, made by tools/tokenizer/make_chat_tokenizers.py), recognition of
// tokenizer_config.json files, tokenization and its errors.
#include "xtuner/data/chat_template.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "dataio/chat_test_util.h"
#include "util/testing.h"
#include "xtuner/core/json.h"
#include "xtuner/data/chat_prompt.h"
#include "xtuner/data/chat_template_internal.h"
#include "xtuner/data/dataset.h"

namespace xt {
namespace {

using nlohmann::ordered_json;

// Harmony's options for the tests: a fixed date.
ChatTemplateOptions Dated(const std::string& name) {
  ChatTemplateOptions o;
  if (name == "harmony") o.current_date = "2025-08-05";
  return o;
}

// The template of a fixture render, with the options transformers was given.
ChatTemplate FixtureTemplate(const ordered_json& r) {
  ChatTemplateOptions o;
  if (r.contains("options")) {
    const ordered_json& j = r["options"];
    o.current_date = j.value("date", "");
    o.reasoning_effort = j.value("reasoning_effort", "");
    o.model_identity = j.value("model_identity", "");
  }
  auto t = ChatTemplate::ByName(r["template"], o);
  EXPECT_TRUE(t.ok()) << t.status().message();
  return *t;
}

std::string Render(const std::string& name, const Conversation& c, bool last_only = false) {
  auto t = ChatTemplate::ByName(name, Dated(name));
  EXPECT_TRUE(t.ok()) << t.status().message();
  auto segs = t->Render(c, last_only);
  EXPECT_TRUE(segs.ok()) << segs.status().message();
  return segs.ok() ? Show(segs.value()) : "";
}

std::string RenderError(const std::string& name, const Conversation& c) {
  auto segs = ChatTemplate::ByName(name, Dated(name))->Render(c, false);
  EXPECT_FALSE(segs.ok()) << name << " rendered " << Show(segs.value());
  return segs.ok() ? "" : segs.status().message();
}

const Tokenizer& Tok(const std::string& name) {
  static std::map<std::string, Tokenizer> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    auto t = Tokenizer::FromFile(testing::DataPath("tokenizers/" + name + "/tokenizer.json"));
    if (!t.ok()) {
      ADD_FAILURE() << t.status().message();
      std::abort();
    }
    it = cache.emplace(name, std::move(t).value()).first;
  }
  return it->second;
}

const ordered_json& Expected() {
  static const ordered_json j = [] {
    std::ifstream in(testing::DataPath("tokenizers/chat_templates/expected.json"));
    return testing::OrderedJson(in);
  }();
  return j;
}

// A conversation with every kind of turn: system, a tool call (with a thinking that Qwen3 drops,
// since a later user message follows), its result, an answer, a new question, and an answer.
const char* kToolConversation = R"({"messages": [
  {"role": "system", "content": "You are a helpful assistant."},
  {"role": "user", "content": "What's the weather in Paris?"},
  {"role": "assistant", "content": null, "reasoning_content": "I should call the tool.",
   "tool_calls": [{"type": "function",
                   "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
  {"role": "tool", "name": "get_weather", "content": "sunny, 21 °C"},
  {"role": "assistant", "content": "Sunny and 21 °C."},
  {"role": "user", "content": "Thanks! And 2+2?"},
  {"role": "assistant", "content": "4", "thinking": "2+2=4"}]})";

Conversation WithoutThinking(Conversation c) {
  for (auto& m : c.messages) m.thinking.clear();
  return c;
}

// ---- Exact renders and masks ([[trainable]]) ----

TEST(ChatTemplateTest, Qwen3RendersThinkingToolsAndMask) {
  EXPECT_EQ(Render("qwen3", Conv(kToolConversation)),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "[[<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call><|im_end|>]]\n"
            "<|im_start|>user\n<tool_response>\nsunny, 21 °C\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n[[Sunny and 21 °C.<|im_end|>]]\n"
            "<|im_start|>user\nThanks! And 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n[[<think>\n2+2=4\n</think>\n\n4<|im_end|>]]\n");
}

TEST(ChatTemplateTest, Qwen3TrainLastTurnOnly) {
  EXPECT_EQ(Render("qwen3", Conv(kToolConversation), /*last_only=*/true),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call><|im_end|>\n"
            "<|im_start|>user\n<tool_response>\nsunny, 21 °C\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\nSunny and 21 °C.<|im_end|>\n"
            "<|im_start|>user\nThanks! And 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n[[<think>\n2+2=4\n</think>\n\n4<|im_end|>]]\n");
}

TEST(ChatTemplateTest, Qwen3KeepsReasoningAfterTheLastQueryAndAddsEmptyThinkLast) {
  // Turns after the last user query keep their reasoning (a multi-step tool loop); the last
  // turn gets an empty think block when it has none.
  EXPECT_EQ(Render("qwen3", Conv(R"({"messages": [
      {"role": "user", "content": "Q"},
      {"role": "assistant", "content": "", "thinking": "call it",
       "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]},
      {"role": "tool", "content": "r1"},
      {"role": "assistant", "content": "done"}]})")),
            "<|im_start|>user\nQ<|im_end|>\n"
            "<|im_start|>assistant\n[[<think>\ncall it\n</think>\n\n<tool_call>\n"
            "{\"name\": \"f\", \"arguments\": {}}\n</tool_call><|im_end|>]]\n"
            "<|im_start|>user\n<tool_response>\nr1\n</tool_response><|im_end|>\n"
            "<|im_start|>assistant\n[[<think>\n\n</think>\n\ndone<|im_end|>]]\n");
}

TEST(ChatTemplateTest, ChatmlRendersEveryRoleAndQwenStyleToolCalls) {
  EXPECT_EQ(Render("chatml", WithoutThinking(Conv(kToolConversation))),
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
            "<|im_start|>user\nWhat's the weather in Paris?<|im_end|>\n"
            "<|im_start|>assistant\n"
            "[[<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n"
            "</tool_call><|im_end|>]]\n"
            "<|im_start|>tool\nsunny, 21 °C<|im_end|>\n"
            "<|im_start|>assistant\n[[Sunny and 21 °C.<|im_end|>]]\n"
            "<|im_start|>user\nThanks! And 2+2?<|im_end|>\n"
            "<|im_start|>assistant\n[[4<|im_end|>]]\n");
}

TEST(ChatTemplateTest, ChatmlPutsToolsInTheSystemTurn) {
  Conversation c = Conv(R"({"tools": [{"type": "function", "function": {"name": "f"}}],
      "messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                   {"role": "assistant", "content": "A"}]})");
  EXPECT_EQ(Render("chatml", c),
            "<|im_start|>system\nS\n\n# Tools\n\nYou may call one or more functions to assist "
            "with the user query.\n\nYou are provided with function signatures within "
            "<tools></tools> XML tags:\n<tools>\n{\"type\": \"function\", \"function\": "
            "{\"name\": \"f\"}}\n</tools>\n\nFor each function call, return a json object with "
            "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
            "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"
            "<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n[[A<|im_end|>]]\n");
}

TEST(ChatTemplateTest, Llama3RendersHeadersTrimsAndMasks) {
  EXPECT_EQ(Render("llama3", Conv(R"({"messages": [
      {"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "What is 2+2?\n"},
      {"role": "assistant", "content": "  4  "},
      {"role": "user", "content": "And 3+3?"},
      {"role": "assistant", "content": "6"}]})")),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "You are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[4<|eot_id|>]]"
            "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[6<|eot_id|>]]");
}

TEST(ChatTemplateTest, Llama31RendersDatePreambleToolCallAndIpython) {
  EXPECT_EQ(Render("llama3.1", WithoutThinking(Conv(kToolConversation))),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"
            "You are a helpful assistant.<|eot_id|>"
            "<|start_header_id|>user<|end_header_id|>\n\nWhat's the weather in Paris?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n"
            "[[{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}<|eot_id|>]]"
            "<|start_header_id|>ipython<|end_header_id|>\n\n\"sunny, 21 °C\"<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[Sunny and 21 °C.<|eot_id|>]]"
            "<|start_header_id|>user<|end_header_id|>\n\nThanks! And 2+2?<|eot_id|>"
            "<|start_header_id|>assistant<|end_header_id|>\n\n[[4<|eot_id|>]]");
}

TEST(ChatTemplateTest, DeepseekV3RendersToolTokensAndMasks) {
  EXPECT_EQ(Render("deepseek-v3", WithoutThinking(Conv(kToolConversation))),
            "<｜begin▁of▁sentence｜>You are a helpful assistant."
            "<｜User｜>What's the weather in Paris?<｜Assistant｜>"
            "[[<｜tool▁calls▁begin｜><｜tool▁call▁begin｜>function<｜tool▁sep｜>get_weather\n"
            "```json\n{\"city\": \"Paris\"}\n```<｜tool▁call▁end｜><｜tool▁calls▁end｜>"
            "<｜end▁of▁sentence｜>]]"
            "<｜tool▁outputs▁begin｜><｜tool▁output▁begin｜>sunny, 21 °C<｜tool▁output▁end｜>"
            "<｜tool▁outputs▁end｜>[[Sunny and 21 °C.<｜end▁of▁sentence｜>]]"
            "<｜User｜>Thanks! And 2+2?<｜Assistant｜>[[4<｜end▁of▁sentence｜>]]");
}

TEST(ChatTemplateTest, TrainLastTurnOnlyForEveryTemplate) {
  Conversation c = WithoutThinking(Conv(kToolConversation));
  c.messages.erase(c.messages.begin() + 2, c.messages.begin() + 4);  // no tool call
  for (const auto& name : ChatTemplate::Names()) {
    auto segs = ChatTemplate::ByName(name, Dated(name))->Render(c, /*train_last_turn_only=*/true);
    ASSERT_TRUE(segs.ok()) << segs.status().message();
    int trainable = 0;
    for (const auto& s : segs.value()) {
      if (!s.trainable) continue;
      ++trainable;
      EXPECT_NE(s.text.find('4'), std::string::npos) << name;  // the last answer
    }
    EXPECT_EQ(trainable, 1) << name;
  }
}

// ---- Agreement with transformers on the real templates ----

TEST(ChatTemplateTest, MatchesTransformersOnRealTemplates) {
  int checked = 0;
  for (const auto& r : Expected()["renders"]) {
    const std::string name = r["template"];
    SCOPED_TRACE(name + " / " + r["case"].get<std::string>());
    auto segs = FixtureTemplate(r).Render(Conv(r["sample"]), false);
    ASSERT_TRUE(segs.ok()) << segs.status().message();
    EXPECT_EQ(Concat(segs.value()), r["text"].get<std::string>());
    ++checked;
  }
  EXPECT_GE(checked, 53);
}

TEST(ChatTemplateTest, RefusesWhatTheTemplateWouldDropFromTheTrainedText) {
  int checked = 0;
  for (const auto& r : Expected()["errors"]) {
    const std::string name = r["template"];
    SCOPED_TRACE(name + " / " + r["case"].get<std::string>());
    std::string msg = RenderError(name, Conv(r["sample"]));
    // (Harmony also refuses tools, which are not a message.)
    EXPECT_NE(
        msg.find(name + (name == "harmony" ? " chat template: " : " chat template: message ")),
        std::string::npos)
        << msg;
    ++checked;
  }
  EXPECT_GE(checked, 18);
}

TEST(ChatTemplateTest, RenderErrors) {
  EXPECT_NE(RenderError("qwen3", Conversation{}).find("no messages"), std::string::npos);
  Conversation c = Conv(R"({"messages": [{"role": "user", "content": "u"},
                                          {"role": "assistant", "content": "a"}]})");
  c.messages[0].role = "bot";
  EXPECT_EQ(RenderError("chatml", c),
            "chatml chat template: message 0 (bot): unknown role (expected system, developer, "
            "user, assistant or tool)");
  c.messages[0].role = "user";
  c.messages[0].thinking = "t";
  EXPECT_NE(RenderError("qwen3", c).find("message 0 (user): only assistant"), std::string::npos);
  c.messages[0].thinking.clear();
  c.messages[1].thinking = "t";
  EXPECT_EQ(RenderError("llama3", c),
            "llama3 chat template: message 1 (assistant): Llama 3 has no place for thinking");
  c.messages[1].thinking.clear();
  c.tools_json = "{\"not\": \"a list\"}";
  EXPECT_NE(RenderError("qwen3", c).find("tools must be a JSON array"), std::string::npos);
  c.tools_json = "[1,";
  EXPECT_NE(RenderError("llama3.1", c)
                .find("llama3.1 chat template: tools: not valid JSON: parse error at line 1, "
                      "column 4"),
            std::string::npos)
      << RenderError("llama3.1", c);
}

// ---- Names and recognition ----

TEST(ChatTemplateTest, ByNameListsTheNames) {
  EXPECT_EQ(ChatTemplate::Names(),
            (std::vector<std::string>{"chatml", "qwen3", "llama3", "llama3.1", "deepseek-v3",
                                      "harmony"}));
  for (const auto& n : ChatTemplate::Names()) EXPECT_EQ(ChatTemplate::ByName(n)->name(), n);
  auto t = ChatTemplate::ByName("qwen2");
  ASSERT_FALSE(t.ok());
  EXPECT_EQ(t.status().message(),
            "unknown chat template \"qwen2\"; the built-in ones are: chatml, qwen3, llama3, "
            "llama3.1, deepseek-v3, harmony");
}

std::string WriteConfig(const std::string& dir, const ordered_json& config) {
  std::string path = dir + "/tokenizer_config.json";
  std::ofstream(path) << DumpJson(config, 2);
  return path;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(ChatTemplateTest, DetectsTheRealTemplates) {
  int checked = 0;
  for (const auto& d : Expected()["detect"]) {
    const std::string file = d["file"];
    SCOPED_TRACE(file);
    std::string dir = testing::TempDir("detect");
    std::string path = WriteConfig(
        dir, {{"eos_token", "x"},
              {"chat_template", ReadText(testing::DataPath("tokenizers/chat_templates/" + file))}});
    auto name = ChatTemplate::DetectName(path);
    if (d["name"].is_null()) {
      ASSERT_FALSE(name.ok()) << "recognised as " << name.value();
      EXPECT_EQ(name.status().message(),
                path +
                    ": the chat template is not one of the built-in templates (chatml, qwen3, "
                    "llama3, llama3.1, deepseek-v3, harmony); they render differently, so name "
                    "the template only if the model was trained with one of them");
    } else {
      ASSERT_TRUE(name.ok()) << name.status().message();
      EXPECT_EQ(name.value(), d["name"].get<std::string>());
    }
    ++checked;
  }
  EXPECT_EQ(checked, 13);
}

TEST(ChatTemplateTest, DetectsFromTheFixtureConfigsAndDirectories) {
  const std::pair<const char*, const char*> cases[] = {{"chat_qwen3", "qwen3"},
                                                       {"chat_llama3", "llama3.1"},
                                                       {"chat_deepseek_v3", "deepseek-v3"},
                                                       {"chat_gpt_oss", "harmony"}};
  for (const auto& [dir, name] : cases) {
    std::string d = testing::DataPath(std::string("tokenizers/") + dir);
    EXPECT_EQ(ChatTemplate::DetectName(d + "/tokenizer_config.json").value(), name);
    EXPECT_EQ(ChatTemplate::DetectName(d).value(), name);  // the directory
  }
}

TEST(ChatTemplateTest, DetectsListTemplatesAndChatTemplateJinja) {
  std::string qwen3 =
      ReadText(testing::DataPath("tokenizers/chat_templates/Qwen-Qwen3-0.6B.jinja"));
  std::string dir = testing::TempDir("detect_list");
  ordered_json list = ordered_json::array(
      {{{"name", "tool_use"}, {"template", "x"}}, {{"name", "default"}, {"template", qwen3}}});
  EXPECT_EQ(ChatTemplate::DetectName(WriteConfig(dir, {{"chat_template", list}})).value(), "qwen3");

  list.erase(1);
  auto r = ChatTemplate::DetectName(WriteConfig(dir, {{"chat_template", list}}));
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("without a \"default\" entry"), std::string::npos);

  // transformers >= 4.43 saves the template beside the config, in chat_template.jinja.
  std::string path = WriteConfig(dir, {{"eos_token", "<|im_end|>"}});
  r = ChatTemplate::DetectName(path);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            path +
                ": no chat_template (nor a chat_template.jinja beside it); name one of the "
                "built-in templates: chatml, qwen3, llama3, llama3.1, deepseek-v3, harmony");
  std::ofstream(dir + "/chat_template.jinja") << qwen3;
  EXPECT_EQ(ChatTemplate::DetectName(path).value(), "qwen3");
}

TEST(ChatTemplateTest, DetectNameFileErrors) {
  auto r = ChatTemplate::DetectName("/nonexistent/tokenizer_config.json");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "/nonexistent/tokenizer_config.json: cannot open: No such file or directory");
  std::string dir = testing::TempDir("detect_bad");
  std::ofstream(dir + "/tokenizer_config.json") << "{not json";
  r = ChatTemplate::DetectName(dir);
  ASSERT_FALSE(r.ok());
  // Where the JSON goes wrong, in nlohmann's words.
  EXPECT_EQ(r.status().message().rfind(dir + "/tokenizer_config.json: not valid JSON: parse error "
                                             "at line 1, column 3: syntax error",
                                       0),
            0u)
      << r.status().message();
  std::ofstream(dir + "/tokenizer_config.json") << "[1]";
  r = ChatTemplate::DetectName(dir);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), dir + "/tokenizer_config.json: not a JSON object");
}

// ---- Helpers that must match Python ----

TEST(ChatTemplateTest, PyJsonDumpsMatchesPython) {
  // Expected strings: json.dumps(json.loads(text), ensure_ascii=False[, indent=4]).
  auto j = testing::OrderedJson(
      R"({"z": 1, "a": [1.5, -0.25, 1e-05, 1e+16, 123456789012, true, null], "é": "t\"ab\t\n\u0001/☃",
          "o": {}, "l": []})");
  EXPECT_EQ(PyJsonDumps(j),
            "{\"z\": 1, \"a\": [1.5, -0.25, 1e-05, 1e+16, 123456789012, true, null], "
            "\"é\": \"t\\\"ab\\t\\n\\u0001/☃\", \"o\": {}, \"l\": []}");
  // Floats as Python's repr: fixed below 1e16, the shortest digits that read back.
  EXPECT_EQ(PyJsonDumps(testing::OrderedJson(
                "[1700000000000000.0, 5e22, 1e23, 0.0001, 0.00012, -0.0, 0.0, 123.0, 1e16, "
                "9999999999999998.0, 7.113578243725634e-249, 1.7976931348623157e308, 5e-324]")),
            "[1700000000000000.0, 5e+22, 1e+23, 0.0001, 0.00012, -0.0, 0.0, 123.0, 1e+16, "
            "9999999999999998.0, 7.113578243725634e-249, 1.7976931348623157e+308, 5e-324]");
  EXPECT_EQ(PyJsonDumps(testing::OrderedJson(R"({"a": [1, {"b": []}], "c": {}})"), 4),
            "{\n    \"a\": [\n        1,\n        {\n            \"b\": []\n        }\n    ],\n"
            "    \"c\": {}\n}");
}

TEST(ChatTemplateTest, PyStripUsesPythonWhitespace) {
  EXPECT_EQ(PyStrip(" \t\n\v\f\r\x1c\x1dx y\u00a0\u3000\u2028\u0085"), "x y");
  EXPECT_EQ(PyStrip("\u200bx\u200b"), "\u200bx\u200b");  // zero-width space is not whitespace
  EXPECT_EQ(PyStrip("   "), "");
  EXPECT_EQ(StripChars("\n\nab\n", "\n"), "ab");
}

// ---- Tokenization (needs the Tokenizer) ----

TEST(ChatTemplateTest, EncodeMatchesWholeTextTokenizationAndMasksByDecoding) {
  int checked = 0;
  for (const auto& r : Expected()["renders"]) {
    const std::string name = r["template"];
    SCOPED_TRACE(name + " / " + r["case"].get<std::string>());
    const Tokenizer& tok = Tok(r["tokenizer"]);
    const ChatTemplate t = FixtureTemplate(r);
    Conversation c = Conv(r["sample"]);
    auto sample = t.Encode(c, tok, false);
    ASSERT_TRUE(sample.ok()) << sample.status().message();
    EXPECT_EQ(sample->input_ids, r["ids"].get<std::vector<int32_t>>());
    ASSERT_EQ(sample->labels.size(), sample->input_ids.size());
    // Each run of labels is the encoding of one segment: trained runs of the trainable ones.
    auto segs = t.Render(c, false).value();
    size_t pos = 0;
    for (const auto& seg : segs) {
      std::vector<int32_t> run;
      const bool trained = pos < sample->labels.size() && sample->labels[pos] != -100;
      EXPECT_EQ(trained, seg.trainable);
      while (pos < sample->labels.size() && (sample->labels[pos] != -100) == trained) {
        if (trained) {
          EXPECT_EQ(sample->labels[pos], sample->input_ids[pos]);
        }
        run.push_back(sample->input_ids[pos++]);
      }
      EXPECT_EQ(run, tok.Encode(seg.text).value());
    }
    EXPECT_EQ(pos, sample->labels.size());
    ++checked;
  }
  EXPECT_GE(checked, 53);
}

TEST(ChatTemplateTest, EncodeTrainsTheEndOfTurnTokenNotTheHeader) {
  const Tokenizer& tok = Tok("chat_qwen3");
  auto s =
      ChatTemplate::ByName("qwen3")->Encode(Conv(R"({"messages": [{"role": "user", "content": "Hi"},
                            {"role": "assistant", "content": "Hello"}]})"),
                                            tok, false);
  ASSERT_TRUE(s.ok()) << s.status().message();
  const int32_t im_start = *tok.TokenToId("<|im_start|>"), im_end = *tok.TokenToId("<|im_end|>");
  const auto& ids = s->input_ids;
  const auto& labels = s->labels;
  // <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\nHello<|im_end|>\n
  ASSERT_EQ(ids.back(), tok.Encode("\n").value().back());
  EXPECT_EQ(labels.back(), -100);  // the newline after <|im_end|>
  EXPECT_EQ(ids[ids.size() - 2], im_end);
  EXPECT_EQ(labels[ids.size() - 2], im_end);
  EXPECT_EQ(ids[0], im_start);
  int trained = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    if (labels[i] == -100) continue;
    ++trained;
    EXPECT_NE(ids[i], im_start);
  }
  EXPECT_EQ(tok.Decode({ids.end() - 1 - trained, ids.end() - 1}).value(),
            "<think>\n\n</think>\n\nHello<|im_end|>");
}

TEST(ChatTemplateTest, EncodeNamesAMissingSpecialToken) {
  // bpe_qwen_style has <|endoftext|>, <|im_start|>, <|im_end|> and nothing else special.
  const Tokenizer& tok = Tok("bpe_qwen_style");
  Conversation c = Conv(R"({"messages": [{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello"}]})");
  auto s = ChatTemplate::ByName("llama3")->Encode(c, tok, false);
  ASSERT_FALSE(s.ok());
  EXPECT_EQ(s.status().message(),
            "tokenizer " + tok.source() +
                " has no token \"<|begin_of_text|>\", which the llama3 chat template needs");
  EXPECT_TRUE(ChatTemplate::ByName("chatml")->Encode(c, tok, false).ok());
  s = ChatTemplate::ByName("qwen3")->Encode(c, tok, false);  // the last turn's <think>
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("has no token \"<think>\", which the qwen3 chat template"),
            std::string::npos);
  EXPECT_FALSE(ChatTemplate::ByName("deepseek-v3")->CheckTokenizer(tok).ok());
  EXPECT_TRUE(ChatTemplate::ByName("chatml")->CheckTokenizer(tok).ok());
}

}  // namespace
}  // namespace xt
