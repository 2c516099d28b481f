// Helpers shared by the tests: fixture paths, random data, error norms, finite differences.
#pragma once

#include <cstdint>
#include <functional>
#include <iosfwd>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace xt::testing {

// Absolute path of a file under tests/data.
std::string DataPath(const std::string& rel);
// A fresh empty directory under the system temp dir, unique per call. Removed with everything in
// it when the test program ends, unless one of its tests failed or XT_KEEP_TEST_DIRS=1.
std::string TempDir(const std::string& tag);

// The "loss" of every line of work_dir/metrics.jsonl, in order.
std::vector<double> Losses(const std::string& work_dir);
// Any numeric metric of every step in metrics.jsonl (e.g. "aux_loss").
std::vector<double> Metric(const std::string& work_dir, const std::string& key);

// JSON through the engine's parser (core/json.h), from text, a stream or a file: bad JSON or an
// unreadable file throws std::runtime_error saying why, which fails the test.
nlohmann::json Json(std::string_view text);
nlohmann::json Json(std::istream& in);
nlohmann::json JsonFile(const std::string& path);
nlohmann::ordered_json OrderedJson(std::string_view text);
nlohmann::ordered_json OrderedJson(std::istream& in);

// Files in `dir` whose name contains ".tmp." (left-over temporaries of an atomic write).
std::vector<std::string> TempFilesIn(const std::string& dir);

// Uniform in [-scale, scale), reproducible from the seed.
std::vector<float> RandomVector(int64_t n, uint64_t seed, float scale = 1.0f);

// ||a - b|| / ||b|| (b the reference); 0 when both are zero.
double RelError(const float* a, const double* b, int64_t n);
double RelError(const float* a, const float* b, int64_t n);

// Central finite differences of a scalar loss with respect to x (perturbed in place and
// restored). Checks at most `max_points` evenly spread elements. Returns
// ||numeric - analytic|| / max(||analytic||, ||numeric||, 1e-12) over those elements.
// The loss should be computed in double from the op's fp32 outputs.
double GradCheck(std::vector<float>& x, const std::vector<float>& analytic,
                 const std::function<double()>& loss, double eps = 1e-2, int max_points = 64);

// Dot product of an fp32 output with fixed weights, in double: a handy scalar loss.
double Dot(const float* out, const std::vector<float>& w);

// Bytes of the pages of [p, p + bytes) that are resident (committed) now, by mincore(2); p must
// be page-aligned (as fresh mappings are).
int64_t ResidentBytes(const void* p, int64_t bytes);

}  // namespace xt::testing
