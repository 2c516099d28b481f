#include "util/testing.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>

#include "xtuner/core/json.h"

namespace xt::testing {

std::string DataPath(const std::string& rel) { return std::string(XT_TEST_DATA_DIR) + "/" + rel; }

std::vector<double> Metric(const std::string& work_dir, const std::string& key) {
  std::ifstream in(work_dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(testing::Json(line).at(key).get<double>());
  return out;
}

std::vector<double> Losses(const std::string& work_dir) { return Metric(work_dir, "loss"); }

namespace {

template <class J>
J ValueOrThrow(Result<J> j) {
  if (!j.ok()) throw std::runtime_error(j.status().message());
  return std::move(*j);
}

std::string ReadAll(std::istream& in) {
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

nlohmann::json Json(std::string_view text) { return ValueOrThrow(ParseJson(text)); }
nlohmann::json Json(std::istream& in) { return Json(ReadAll(in)); }
nlohmann::json JsonFile(const std::string& path) { return ValueOrThrow(ReadJsonFile(path)); }
nlohmann::ordered_json OrderedJson(std::string_view text) {
  return ValueOrThrow(ParseOrderedJson(text));
}
nlohmann::ordered_json OrderedJson(std::istream& in) { return OrderedJson(ReadAll(in)); }

namespace {

// The directories TempDir made in this process. They are removed when the program ends, unless a
// test of the program failed (they are kept to look at, and one is named on stderr) or
// XT_KEEP_TEST_DIRS is set to anything but "" or "0". A crash keeps them too, silently. A forked
// child that exits through exit() removes nothing: the directories are its parent's.
class TempDirs {
 public:
  TempDirs() : owner_(::getpid()) {
    // Made first, so GoogleTest's results outlive this object's destructor.
    ::testing::UnitTest::GetInstance();
  }
  ~TempDirs() {
    std::lock_guard<std::mutex> lock(mu_);
    if (::getpid() != owner_ || dirs_.empty()) return;
    const char* keep = std::getenv("XT_KEEP_TEST_DIRS");
    if ((keep && *keep && std::string(keep) != "0") ||
        ::testing::UnitTest::GetInstance()->Failed()) {
      std::fprintf(stderr, "kept %zu test directories, e.g. %s\n", dirs_.size(),
                   dirs_.back().c_str());
      return;
    }
    for (const std::string& d : dirs_) {
      std::error_code ec;  // already gone, or not ours to remove: nothing to do
      std::filesystem::remove_all(d, ec);
    }
  }
  std::string Make(const std::string& tag) {
    std::lock_guard<std::mutex> lock(mu_);
    // The caller's pid, not owner_: a forked child's directories never collide with its parent's.
    auto dir = std::filesystem::temp_directory_path() /
               ("xtuner_test_" + tag + "_" + std::to_string(::getpid()) + "_" +
                std::to_string(dirs_.size()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    dirs_.push_back(dir.string());
    return dirs_.back();
  }

 private:
  const pid_t owner_;
  std::mutex mu_;
  std::vector<std::string> dirs_;
};

}  // namespace

std::string TempDir(const std::string& tag) {
  static TempDirs dirs;
  return dirs.Make(tag);
}

std::vector<std::string> TempFilesIn(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().filename().string().find(".tmp.") != std::string::npos)
      out.push_back(e.path().string());
  return out;
}

std::vector<float> RandomVector(int64_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<float> dist(-scale, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

double RelError(const float* a, const double* b, int64_t n) {
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; ++i) {
    double d = double(a[i]) - b[i];
    num += d * d;
    den += b[i] * b[i];
  }
  if (den == 0) return num == 0 ? 0 : INFINITY;
  return std::sqrt(num / den);
}

double RelError(const float* a, const float* b, int64_t n) {
  std::vector<double> bd(b, b + n);
  return RelError(a, bd.data(), n);
}

double GradCheck(std::vector<float>& x, const std::vector<float>& analytic,
                 const std::function<double()>& loss, double eps, int max_points) {
  int64_t n = int64_t(x.size());
  int64_t stride = std::max<int64_t>(1, n / max_points);
  double diff = 0, na = 0, nn = 0;
  for (int64_t i = 0; i < n; i += stride) {
    float orig = x[i];
    x[i] = orig + float(eps);
    double lp = loss();
    x[i] = orig - float(eps);
    double lm = loss();
    x[i] = orig;
    double h = (double(orig + float(eps)) - double(orig - float(eps)));
    double num = (lp - lm) / h;
    diff += (num - analytic[i]) * (num - analytic[i]);
    na += double(analytic[i]) * analytic[i];
    nn += num * num;
  }
  double den = std::max({std::sqrt(na), std::sqrt(nn), 1e-12});
  return std::sqrt(diff) / den;
}

double Dot(const float* out, const std::vector<float>& w) {
  double s = 0;
  for (size_t i = 0; i < w.size(); ++i) s += double(out[i]) * w[i];
  return s;
}

int64_t ResidentBytes(const void* p, int64_t bytes) {
  const int64_t page = sysconf(_SC_PAGESIZE);
  std::vector<unsigned char> pages((bytes + page - 1) / page);
  EXPECT_EQ(mincore(const_cast<void*>(p), size_t(bytes), pages.data()), 0);
  int64_t resident = 0;
  for (unsigned char v : pages) resident += (v & 1) ? page : 0;
  return resident;
}

}  // namespace xt::testing
