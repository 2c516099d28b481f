// core/json.h (the one place JSON is parsed and written) and core/utf8.h.
#include "xtuner/core/json.h"

#include <gtest/gtest.h>

#include <fstream>
#include <string>

#include "util/testing.h"
#include "xtuner/core/utf8.h"

namespace xt {
namespace {

using nlohmann::json;

TEST(Json, ParsesAnyValue) {
  auto j = ParseJson(R"({"a": [1, 2.5, "x", null, true], "b": {}})");
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["a"][1].get<double>(), 2.5);
  EXPECT_TRUE((*j)["b"].is_object());
  EXPECT_EQ(ParseJson("7")->get<int>(), 7);
  // Objects keep their keys sorted, or in their order.
  EXPECT_EQ(DumpJson(*ParseJson(R"({"z": 1, "a": 2})")), R"({"a":2,"z":1})");
  EXPECT_EQ(DumpJson(*ParseOrderedJson(R"({"z": 1, "a": 2})")), R"({"z":1,"a":2})");
}

TEST(Json, ErrorsSayWhereTheTextGoesWrong) {
  struct Case {
    const char* text;
    const char* error;
  } cases[] = {
      {"",
       "not valid JSON: parse error at line 1, column 1: syntax error while parsing value - "
       "unexpected end of input"},
      {"{\"a\": 1,\n  }", "not valid JSON: parse error at line 2, column 3: syntax error"},
      {"[1, 2", "not valid JSON: parse error at line 1, column 6: syntax error"},
      {"{} x", "not valid JSON: parse error at line 1, column 4: syntax error"},
      {"\"caf\xe9\"",
       "not valid JSON: parse error at line 1, column 6: syntax error while parsing value - "
       "invalid string: ill-formed UTF-8 byte"},
  };
  for (const Case& c : cases) {
    auto j = ParseJson(c.text);
    ASSERT_FALSE(j.ok()) << c.text;
    EXPECT_EQ(j.status().message().rfind(c.error, 0), 0u) << j.status().message();
    auto o = ParseOrderedJson(c.text);
    ASSERT_FALSE(o.ok()) << c.text;
    EXPECT_EQ(o.status().message(), j.status().message());
  }
}

TEST(Json, LimitsRefuseRepeatedKeysAndDeepNesting) {
  JsonLimits limits;
  limits.unique_keys = true;
  limits.top_level_key = "tensor name";
  EXPECT_EQ(ParseJson(R"({"w": 1, "w": 2})", limits).status().message(),
            "duplicate tensor name 'w'");
  EXPECT_EQ(ParseJson(R"({"w": {"k": 1, "k": 2}})", limits).status().message(),
            "duplicate key 'k'");
  // The same key in two objects is fine; without the limit the last one wins, as in nlohmann.
  EXPECT_TRUE(ParseJson(R"({"a": {"k": 1}, "b": {"k": 2}})", limits).ok());
  EXPECT_EQ((*ParseJson(R"({"w": 1, "w": 2})"))["w"], 2);
  limits.max_depth = 3;
  EXPECT_TRUE(ParseJson("[[[1]]]", limits).ok());
  EXPECT_EQ(ParseJson("[[[[1]]]]", limits).status().message(),
            "JSON nested more than 3 levels deep");
  EXPECT_EQ(ParseJson(R"({"a": {"b": {"c": {}}}})", limits).status().message(),
            "JSON nested more than 3 levels deep");
}

TEST(Json, OrderedParseRefusesDeepNestingBeforeParsing) {
  EXPECT_TRUE(ParseOrderedJson("[[[1]]]", 3).ok());
  // Brackets in strings, after escaped quotes too, do not count.
  EXPECT_TRUE(ParseOrderedJson(R"([["\"[[[[", "]\\"], {"{{{{": 1}])", 3).ok());
  EXPECT_EQ(ParseOrderedJson("[[[{}]]]", 3).status().message(),
            "JSON nested more than 3 levels deep");
  EXPECT_EQ(ParseOrderedJson(R"(["\\", [[[]]]])", 3).status().message(),
            "JSON nested more than 3 levels deep");
  // 100000 levels: refused, not a stack overflow, by every parse unless told otherwise.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  EXPECT_EQ(ParseOrderedJson(deep, 100).status().message(),
            "JSON nested more than 100 levels deep");
  EXPECT_EQ(ParseOrderedJson(deep).status().message(), "JSON nested more than 1000 levels deep");
  EXPECT_EQ(ParseJson(deep).status().message(), "JSON nested more than 1000 levels deep");
  const std::string at_limit = std::string(1000, '[') + std::string(1000, ']');
  EXPECT_TRUE(ParseOrderedJson(at_limit).ok());
  EXPECT_TRUE(ParseJson(at_limit).ok());
  EXPECT_TRUE(ParseOrderedJson("[[[[1]]]]", 0).ok());
}

TEST(Json, ReadJsonFileNamesTheFile) {
  const std::string dir = testing::TempDir("json");
  EXPECT_EQ(ReadJsonFile(dir + "/none.json").status().message(),
            dir + "/none.json: cannot open: No such file or directory");
  // A directory is not read as empty text.
  EXPECT_EQ(ReadJsonFile(dir).status().message(), dir + ": is a directory");
  std::ofstream(dir + "/bad.json") << "{\"a\": }";
  EXPECT_EQ(ReadJsonFile(dir + "/bad.json")
                .status()
                .message()
                .rfind(dir + "/bad.json: not valid JSON: parse error at line 1, column 7", 0),
            0u);
  std::ofstream(dir + "/good.json") << "{\"a\": [1]}";
  auto j = ReadJsonFile(dir + "/good.json");
  ASSERT_TRUE(j.ok()) << j.status().message();
  EXPECT_EQ((*j)["a"][0], 1);
}

TEST(Json, DumpKeepsUnicodeAndReplacesInvalidUtf8) {
  EXPECT_EQ(DumpJson(json{{"t", "中文 é"}}), "{\"t\":\"中文 é\"}");
  EXPECT_EQ(DumpJson(json{{"a", 1}}, 2), "{\n  \"a\": 1\n}");
  // A string built in the engine with a stray byte: written as U+FFFD, not an exception.
  EXPECT_EQ(DumpJson(json("caf\xe9")), "\"caf\xef\xbf\xbd\"");
}

TEST(Utf8, FindInvalidUtf8) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("中文 🙂 é"), std::string_view::npos);
  EXPECT_EQ(FindInvalidUtf8("caf\xe9!"), 3u);           // Latin-1
  EXPECT_EQ(FindInvalidUtf8("ab\xc0\xaf"), 2u);         // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("\xed\xa0\x80"), 0u);       // a UTF-16 surrogate
  EXPECT_EQ(FindInvalidUtf8("x\xf4\x90\x80\x80"), 1u);  // past U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("x\xe4\xb8"), 1u);          // truncated
  EXPECT_EQ(FindInvalidUtf8("\x80"), 0u);               // a lone continuation byte
}

}  // namespace
}  // namespace xt
