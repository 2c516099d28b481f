// `xtuner tokenizer encode|decode` as a user runs it: JSON lines in and out, exit codes, and
// errors that name the file and line.
#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "util/cli.h"
#include "util/testing.h"

namespace xt {
namespace {

using testing::CliRun;

CliRun Xtuner(const std::string& args) { return testing::RunXtuner(args); }

std::string WriteTemp(const std::string& name, const std::string& content) {
  const std::string path = testing::TempDir("tokcli") + "/" + name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

const std::string kTok = " --tokenizer " + testing::DataPath("tokenizers/bpe_qwen_style");

TEST(TokenizerCli, EncodeAndDecodeJsonLines) {
  const std::string in =
      WriteTemp("in.jsonl",
                "{\"text\": \"Hello world\"}\n{\"text\": \"<|im_start|>hi\"}\n{\"text\": \"\"}\n");
  CliRun r = Xtuner("tokenizer encode" + kTok + " --input " + in);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output,
            "{\"ids\": [2873, 332, 1302, 1475]}\n{\"ids\": [3001, 2816]}\n{\"ids\": []}\n")
      << r.output;
  const std::string ids = WriteTemp("ids.jsonl",
                                    "{\"ids\": [2873, 332, 1302, 1475]}\n"
                                    "{\"ids\": [3001, 100]}\n");
  r = Xtuner("tokenizer decode" + kTok + " --input " + ids);
  ASSERT_EQ(r.code, 0) << r.output;
  // Token 100 is a lone continuation byte: U+FFFD, as HF.
  EXPECT_EQ(r.output, "{\"text\":\"Hello world\"}\n{\"text\":\"<|im_start|>\xEF\xBF\xBD\"}\n")
      << r.output;
  r = Xtuner("tokenizer decode --skip-special-tokens" + kTok + " --input " + ids);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("\n{\"text\":\"\xEF\xBF\xBD\"}\n"), std::string::npos) << r.output;
}

TEST(TokenizerCli, ReadsStdin) {
  const std::string in = WriteTemp("stdin.jsonl", "{\"text\": \"a\"}\r\n{\"text\": \"b\"}\n");
  CliRun r = Xtuner("tokenizer encode" + kTok + " < " + in);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_EQ(r.output, "{\"ids\": [64]}\n{\"ids\": [65]}\n");
}

TEST(TokenizerCli, MalformedLinesNameFileAndLine) {
  const std::string in = WriteTemp("bad.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  CliRun r = Xtuner("tokenizer encode" + kTok + " --input " + in);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("xtuner: error: " + in + ":2: expected {\"text\": string}"),
            std::string::npos)
      << r.output;
  const std::string junk = WriteTemp("junk.jsonl", "not json\n");
  r = Xtuner("tokenizer decode" + kTok + " --input " + junk);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(junk + ":1: not valid JSON"), std::string::npos) << r.output;
  const std::string far = WriteTemp("far.jsonl", "{\"ids\": [1]}\n{\"ids\": [1, 99999]}\n");
  r = Xtuner("tokenizer decode" + kTok + " --input " + far);
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(far + ":2: "), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("id 99999 is not in the vocabulary"), std::string::npos) << r.output;
  r = Xtuner("tokenizer decode" + kTok + " --input " +
             WriteTemp("float.jsonl", "{\"ids\": [1.5]}\n"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(":1: ids must be integers"), std::string::npos) << r.output;
}

TEST(TokenizerCli, BadArguments) {
  CliRun r = Xtuner("tokenizer encode");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--tokenizer is required"), std::string::npos) << r.output;
  r = Xtuner("tokenizer");
  EXPECT_NE(r.code, 0);
  r = Xtuner("tokenizer encode --tokenizer /no/such/tokenizer.json --input /dev/null");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/no/such/tokenizer.json: cannot open"), std::string::npos) << r.output;
  r = Xtuner("tokenizer encode" + kTok + " --input /no/such/input.jsonl");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("/no/such/input.jsonl: cannot open"), std::string::npos) << r.output;
}

}  // namespace
}  // namespace xt
