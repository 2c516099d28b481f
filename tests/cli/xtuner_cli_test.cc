// The xtuner binary as a user runs it: exit codes and messages.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <string>

#include "util/cli.h"
#include "util/testing.h"
#include "xtuner/core/safetensors.h"

namespace xt {
namespace {

using testing::CliRun;

CliRun Xtuner(const std::string& args) { return testing::RunXtuner(args); }

TEST(XtunerCli, DebugDumpWritesTheComparisonFile) {
  const std::string dir = testing::DataPath("qwen3_moe_tiny");
  const std::string out = testing::TempDir("cli") + "/dump.safetensors";
  CliRun r = Xtuner("debug-dump --model " + dir + " --batch " + dir +
                    "/reference.safetensors --out " + out);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_NE(r.output.find("debug-dump: qwen3_moe: 32 tokens, loss 5.7687"), std::string::npos)
      << r.output;
  auto f = SafetensorsFile::Open(out);
  ASSERT_TRUE(f.ok()) << f.status().message();
  EXPECT_TRUE(f->contains("grad.model.layers.1.mlp.experts.7.down_proj.weight"));
  EXPECT_TRUE(f->contains("packed.logits"));
}

TEST(XtunerCli, MissingOptionsPrintUsage) {
  CliRun r = Xtuner("debug-dump --model x");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.output.find("--batch is required"), std::string::npos) << r.output;
  r = Xtuner("");
  EXPECT_NE(r.code, 0);
  r = Xtuner("no-such-command");
  EXPECT_NE(r.code, 0);
}

TEST(XtunerCli, BadInputsNameTheFile) {
  const std::string dir = testing::DataPath("qwen3_moe_tiny");
  const std::string tmp = testing::TempDir("clibad");
  CliRun r = Xtuner("debug-dump --model /no/such/model --batch " + dir +
                    "/reference.safetensors --out " + tmp + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("xtuner: error: /no/such/model"), std::string::npos) << r.output;
  // A batch file that is not safetensors.
  const std::string junk = tmp + "/junk.safetensors";
  FILE* f = std::fopen(junk.c_str(), "w");
  std::fputs("hello", f);
  std::fclose(f);
  r = Xtuner("debug-dump --model " + dir + " --batch " + junk + " --out " + tmp + "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find(junk), std::string::npos) << r.output;
  // A batch without input_ids.
  ASSERT_TRUE(
      WriteSafetensors(tmp + "/b.safetensors", {{"labels", Tensor::Zeros(DType::I64, {1, 4})}})
          .ok());
  r = Xtuner("debug-dump --model " + dir + " --batch " + tmp + "/b.safetensors --out " + tmp +
             "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("no tensor \"input_ids\""), std::string::npos) << r.output;
  // Token ids outside the vocabulary.
  Tensor ids = Tensor::Zeros(DType::I64, {1, 4});
  ids.i64()[2] = 5000;
  ASSERT_TRUE(WriteSafetensors(tmp + "/c.safetensors", {{"input_ids", ids}}).ok());
  r = Xtuner("debug-dump --model " + dir + " --batch " + tmp + "/c.safetensors --out " + tmp +
             "/o.safetensors");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.output.find("token id 5000 at position 2 is outside the vocabulary"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(std::filesystem::exists(tmp + "/o.safetensors"));
}

}  // namespace
}  // namespace xt
