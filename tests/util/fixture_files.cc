#include "util/fixture_files.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "util/testing.h"
#include "xtuner/core/safetensors.h"

namespace xt::testing {

void ReferenceBatch(const std::string& fixture, std::vector<int64_t>* ids,
                    std::vector<int64_t>* labels) {
  auto f = SafetensorsFile::Open(DataPath(fixture + "/reference.safetensors"));
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto i = f->GetF64("input_ids", {2, 16});
  auto l = f->GetF64("labels", {2, 16});
  ASSERT_TRUE(i.ok() && l.ok());
  ids->assign(i->begin(), i->end());
  labels->assign(l->begin(), l->end());
}

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
