// SwapInDirectory: a directory put in place of another in one step.
#include "xtuner/core/file_util.h"

#include <fcntl.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <thread>
#include <utility>

#include "util/testing.h"

namespace xt {
namespace {

namespace fs = std::filesystem;

void WriteText(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  ASSERT_TRUE(WriteFileAtomically(p.string(), text).ok());
}

std::string Text(const fs::path& p) {
  Result<std::string> r = ReadFileToString(p.string());
  return r.ok() ? *r : "(" + r.status().message() + ")";
}

TEST(SwapInDirectory, ReplacesTheOldDirectoryWholeAndRemovesIt) {
  const fs::path root = testing::TempDir("swap_in_replace");
  WriteText(root / "out" / "a.txt", "old a");
  WriteText(root / "out" / "only_old.txt", "old");
  WriteText(root / "out.tmp" / "a.txt", "new a");
  WriteText(root / "out.tmp" / "sub" / "b.txt", "new b");
  ASSERT_TRUE(SwapInDirectory((root / "out.tmp").string(), (root / "out").string()).ok());
  EXPECT_EQ(Text(root / "out" / "a.txt"), "new a");
  EXPECT_EQ(Text(root / "out" / "sub" / "b.txt"), "new b");
  EXPECT_FALSE(fs::exists(root / "out" / "only_old.txt"));
  EXPECT_FALSE(fs::exists(root / "out.tmp"));
}

// Whether the file system under `root` exchanges two directories in one step.
bool CanExchange(const fs::path& root) {
  fs::create_directories(root / "probe_a");
  fs::create_directories(root / "probe_b");
  const bool ok = ::renameat2(AT_FDCWD, (root / "probe_a").c_str(), AT_FDCWD,
                              (root / "probe_b").c_str(), RENAME_EXCHANGE) == 0;
  fs::remove_all(root / "probe_a");
  fs::remove_all(root / "probe_b");
  return ok;
}

// A reader looking the whole time never finds the directory absent (a removal followed by a
// rename would leave it absent for a moment, which this loop sees within a few swaps).
TEST(SwapInDirectory, ThereIsNoMomentWithoutADirectory) {
  const fs::path root = testing::TempDir("swap_in_watch");
  if (!CanExchange(root))
    GTEST_SKIP() << "skipped: " << root << "'s file system cannot exchange directories";
  WriteText(root / "out" / "a.txt", "0");
  std::atomic<bool> done{false};
  std::atomic<int64_t> looks{0}, misses{0};
  std::thread reader([&] {
    while (!done.load()) {
      looks++;
      if (!fs::exists(root / "out" / "a.txt")) misses++;
    }
  });
  for (int i = 1; i <= 200; ++i) {
    WriteText(root / "out.tmp" / "a.txt", std::to_string(i));
    ASSERT_TRUE(SwapInDirectory((root / "out.tmp").string(), (root / "out").string()).ok());
  }
  done = true;
  reader.join();
  EXPECT_EQ(misses.load(), 0) << "of " << looks.load() << " looks";
  EXPECT_EQ(Text(root / "out" / "a.txt"), "200");
}

TEST(SwapInDirectory, MovesInWhereThereWasNone) {
  const fs::path root = testing::TempDir("swap_in_new");
  WriteText(root / "out.tmp" / "a.txt", "new a");
  ASSERT_TRUE(SwapInDirectory((root / "out.tmp").string(), (root / "out").string()).ok());
  EXPECT_EQ(Text(root / "out" / "a.txt"), "new a");
  EXPECT_FALSE(fs::exists(root / "out.tmp"));
}

TEST(SwapInDirectory, AMissingSourceIsAnErrorThatLeavesTheOldOne) {
  const fs::path root = testing::TempDir("swap_in_missing");
  WriteText(root / "out" / "a.txt", "old a");
  Status st = SwapInDirectory((root / "absent").string(), (root / "out").string());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find((root / "absent").string()), std::string::npos) << st.message();
  EXPECT_NE(st.message().find((root / "out").string()), std::string::npos) << st.message();
  EXPECT_EQ(Text(root / "out" / "a.txt"), "old a");
  // Nothing at either place: still an error, naming both.
  st = SwapInDirectory((root / "absent").string(), (root / "none").string());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find((root / "none").string()), std::string::npos) << st.message();
}

TEST(SwapInDirectory, TheSameDirectoryOrOneInsideTheOtherIsRefusedAndKept) {
  const fs::path root = testing::TempDir("swap_in_same");
  WriteText(root / "out" / "a.txt", "a");
  WriteText(root / "out" / "in" / "b.txt", "b");
  for (const auto& [from, to] : {std::pair<fs::path, fs::path>{root / "out", root / "out"},
                                 {root / "out", root / "." / "out" / ""},
                                 {root / "out" / "in", root / "out"},
                                 {root / "out", root / "out" / "in"}}) {
    const Status st = SwapInDirectory(from.string(), to.string());
    ASSERT_FALSE(st.ok()) << from << " -> " << to;
    EXPECT_NE(st.message().find("inside"), std::string::npos) << st.message();
    EXPECT_EQ(Text(root / "out" / "a.txt"), "a");
    EXPECT_EQ(Text(root / "out" / "in" / "b.txt"), "b");
  }
}

// A symlink to a directory is not a directory to put in place: removing the old one, then where it
// stood, would remove what the link pointed to. Nothing moves.
TEST(SwapInDirectory, ASymlinkToPutInPlaceIsRefused) {
  const fs::path root = testing::TempDir("swap_in_from_link");
  WriteText(root / "out" / "sub" / "new.txt", "new");
  fs::create_directory_symlink(root / "out" / "sub", root / "link");
  const Status st = SwapInDirectory((root / "link").string(), (root / "out").string());
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("is not a directory"), std::string::npos) << st.message();
  EXPECT_EQ(Text(root / "out" / "sub" / "new.txt"), "new");
  EXPECT_TRUE(fs::is_symlink(root / "link"));
}

TEST(SwapInDirectory, ATrailingSlashNamesTheSameDirectory) {
  const fs::path root = testing::TempDir("swap_in_slash");
  WriteText(root / "out" / "a.txt", "old a");
  WriteText(root / "out.tmp" / "a.txt", "new a");
  ASSERT_TRUE(
      SwapInDirectory((root / "out.tmp").string() + "/", (root / "out").string() + "/").ok());
  EXPECT_EQ(Text(root / "out" / "a.txt"), "new a");
  EXPECT_FALSE(fs::exists(root / "out.tmp"));
}

// A file or a symlink at `to` is replaced itself; a symlink's target stays.
TEST(SwapInDirectory, AFileOrASymlinkThereIsReplacedItself) {
  const fs::path root = testing::TempDir("swap_in_file");
  WriteText(root / "out", "a file");
  WriteText(root / "out.tmp" / "a.txt", "new a");
  ASSERT_TRUE(SwapInDirectory((root / "out.tmp").string(), (root / "out").string()).ok());
  EXPECT_EQ(Text(root / "out" / "a.txt"), "new a");
  WriteText(root / "target" / "t.txt", "kept");
  fs::create_directory_symlink(root / "target", root / "link");
  WriteText(root / "link.tmp" / "a.txt", "new");
  ASSERT_TRUE(SwapInDirectory((root / "link.tmp").string(), (root / "link").string()).ok());
  EXPECT_FALSE(fs::is_symlink(root / "link"));
  EXPECT_EQ(Text(root / "link" / "a.txt"), "new");
  EXPECT_EQ(Text(root / "target" / "t.txt"), "kept");
}

}  // namespace
}  // namespace xt
