// NonFiniteGuard: counts skipped steps and stops after max_consecutive in a row.
#include "xtuner/optim/non_finite_guard.h"

#include <gtest/gtest.h>

#include <cmath>

namespace xt {
namespace {

TEST(NonFiniteGuard, StopsAtTheLimitOfConsecutiveSkips) {
  NonFiniteGuard g(3);
  EXPECT_TRUE(g.Record(true, 2.0).ok());
  EXPECT_TRUE(g.Record(false, NAN).ok());
  EXPECT_TRUE(g.Record(false, NAN).ok());
  EXPECT_TRUE(g.Record(true, 2.0).ok());  // resets the run, not the total
  EXPECT_EQ(g.consecutive(), 0);
  EXPECT_EQ(g.total_skipped(), 2);
  EXPECT_TRUE(g.Record(false, 1.5).ok());
  EXPECT_TRUE(g.Record(false, INFINITY).ok());
  auto st = g.Record(false, NAN);
  ASSERT_FALSE(st.ok());
  EXPECT_EQ(g.consecutive(), 3);
  EXPECT_EQ(g.total_skipped(), 5);
  EXPECT_EQ(st.message().rfind("stopping: 3 optimizer steps in a row had a non-finite gradient "
                               "(NaN or Inf); last loss was nan; 5 steps skipped in all",
                               0),
            0u)
      << st.message();
  EXPECT_FALSE(g.Record(false, 3.25).ok());  // still stopped
  EXPECT_NE(g.Record(false, 3.25).message().find("last loss was 3.25"), std::string::npos);
}

TEST(NonFiniteGuard, LimitOfOneStopsAtTheFirstAndZeroNever) {
  NonFiniteGuard one(1);
  EXPECT_FALSE(one.Record(false, 1.0).ok());
  NonFiniteGuard never(0);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(never.Record(false, NAN).ok());
  EXPECT_EQ(never.total_skipped(), 100);
  EXPECT_EQ(never.consecutive(), 100);
}

TEST(NonFiniteGuard, RestoreContinuesTheCount) {
  NonFiniteGuard g(2);
  g.Restore(1, 10);
  auto st = g.Record(false, NAN);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("11 steps skipped in all"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace xt
