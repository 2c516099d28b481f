#include "util/testing.h"

#include <unistd.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

namespace xt::testing {

std::string DataPath(const std::string& rel) { return std::string(XT_TEST_DATA_DIR) + "/" + rel; }

std::vector<double> Metric(const std::string& work_dir, const std::string& key) {
  std::ifstream in(work_dir + "/metrics.jsonl");
  std::vector<double> out;
  std::string line;
  while (std::getline(in, line)) out.push_back(nlohmann::json::parse(line).at(key).get<double>());
  return out;
}

std::vector<double> Losses(const std::string& work_dir) { return Metric(work_dir, "loss"); }

std::string TempDir(const std::string& tag) {
  static std::atomic<int> counter{0};
  auto dir =
      std::filesystem::temp_directory_path() /
      ("xtuner_test_" + tag + "_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir.string();
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

}  // namespace xt::testing
