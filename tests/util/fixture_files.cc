#include "util/fixture_files.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "util/testing.h"
#include "xtuner/core/safetensors.h"

namespace xt::testing {

NamedTensors FixtureTensors(const std::string& fixture) {
  auto f = SafetensorsFile::Open(DataPath(fixture + "/model.safetensors"));
  EXPECT_TRUE(f.ok()) << f.status().message();
  NamedTensors out;
  if (!f.ok()) return out;
  for (const std::string& n : f->names()) {
    auto t = f->Get(n);
    EXPECT_TRUE(t.ok()) << t.status().message();
    if (t.ok()) out.emplace_back(n, *t);
  }
  return out;
}

std::string WriteFixtureCopy(const std::string& fixture, const NamedTensors& tensors) {
  const std::string dir = TempDir("fixture_copy");
  std::filesystem::copy_file(DataPath(fixture + "/config.json"), dir + "/config.json");
  Status st = WriteSafetensors(dir + "/model.safetensors", tensors);
  EXPECT_TRUE(st.ok()) << st.message();
  return dir;
}

}  // namespace xt::testing
