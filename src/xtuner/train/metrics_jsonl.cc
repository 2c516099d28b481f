#include "xtuner/train/metrics_jsonl.h"

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"

namespace xt {

namespace {

// The step of one metrics line, or nullopt when the line is not a metrics record.
std::optional<int64_t> StepOf(const std::string& line) {
  const Result<nlohmann::json> j = ParseJson(line);
  if (!j.ok() || !j->is_object()) return std::nullopt;
  auto it = j->find("step");
  if (it == j->end() || !it->is_number_integer()) return std::nullopt;
  return it->get<int64_t>();
}

}  // namespace

Status TruncateAfterStep(const std::string& path, int64_t step) {
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return Status::OK();
  // (A failed read is an error, not a short file: the file is cut to what was read.)
  XT_ASSIGN_OR_RETURN(const std::string text, ReadFileToString(path));

  size_t keep = 0;  // bytes of the longest prefix of good lines
  int64_t line_no = 0;
  while (keep < text.size()) {
    ++line_no;
    const size_t nl = text.find('\n', keep);
    if (nl == std::string::npos) break;  // torn last line
    auto s = StepOf(text.substr(keep, nl - keep));
    if (!s) {
      if (nl + 1 < text.size()) {
        return Status::Error(path + ":" + std::to_string(line_no) +
                             ": not a metrics record (a JSON object with an integer \"step\"), "
                             "and more lines follow; refusing to truncate");
      }
      break;  // an unparseable last line: a crash mid-write
    }
    if (*s > step) break;
    keep = nl + 1;
  }
  if (keep == text.size()) return Status::OK();
  std::filesystem::resize_file(path, keep, ec);
  if (ec) return Status::Error(path + ": cannot truncate: " + ec.message());
  return Status::OK();
}

Result<std::unique_ptr<MetricsJsonl>> MetricsJsonl::Open(const std::string& path,
                                                         int64_t after_step) {
  XT_RETURN_IF_ERROR(TruncateAfterStep(path, after_step));
  std::FILE* f = std::fopen(path.c_str(), "ab");
  if (!f) return Status::Error(path + ": cannot open for appending: " + ErrnoText());
  return std::unique_ptr<MetricsJsonl>(new MetricsJsonl(path, f));
}

MetricsJsonl::~MetricsJsonl() { std::fclose(f_); }

Status MetricsJsonl::Append(const StepMetrics& m) {
  const std::string line = DumpJson(ToJson(m)) + "\n";
  if (std::fwrite(line.data(), 1, line.size(), f_) != line.size() || std::fflush(f_) != 0) {
    const std::string err = ErrnoText();
    std::clearerr(f_);
    return Status::Error(path_ + ": cannot write the metrics of step " + std::to_string(m.step) +
                         ": " + err);
  }
  return Status::OK();
}

}  // namespace xt
