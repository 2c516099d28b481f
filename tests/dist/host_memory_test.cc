// The host memory figures the CPU trainer checks its first step against (dist/host_memory.h).
#include "xtuner/dist/host_memory.h"

#include <gtest/gtest.h>

#include <memory>

namespace xt {
namespace {

TEST(HostMemory, AvailableMemoryIsReadAndPlausible) {
  const int64_t available = AvailableHostMemory();
  ASSERT_GT(available, 0) << "MemAvailable of /proc/meminfo";
  EXPECT_LT(available, int64_t(1) << 50);  // under a PiB: bytes, not a misread unit
  EXPECT_EQ(available % 1024, 0);          // the kernel reports kB
}

TEST(HostMemory, OneProcessIsAloneOnItsHost) {
  std::unique_ptr<Comm> one = MakeSingleComm();
  EXPECT_EQ(RanksOnThisHost(*one), 1);
}

}  // namespace
}  // namespace xt
