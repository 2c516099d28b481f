#include "xtuner/train/progress_summary.h"

#include <algorithm>
#include <cmath>

#include "xtuner/train/progress_format.h"

namespace xt {

namespace {

std::string Percent(double fraction) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f%%", 100.0 * fraction);
  return buf;
}

}  // namespace

std::vector<RunSummary::Row> SummaryRows(const RunSummary& s) {
  std::vector<RunSummary::Row> rows;
  const bool moe = s.num_experts > 0;
  if (s.total_params >= 0) {
    std::string v = HumanCount(double(s.total_params));
    if (moe && s.active_params >= 0) v += " (" + HumanCount(double(s.active_params)) + " active)";
    rows.push_back({"model", "parameters", v});
  }
  if (s.num_layers >= 0) rows.push_back({"model", "layers", std::to_string(s.num_layers)});
  if (moe) {
    rows.push_back({"model", "experts",
                    std::to_string(s.num_experts) + " routed, top-" + std::to_string(s.top_k)});
  }
  if (s.samples >= 0) {
    std::string v = HumanCount(double(s.samples));
    std::vector<std::string> notes;
    if (s.dropped > 0) notes.push_back(HumanCount(double(s.dropped)) + " dropped");
    if (s.truncated > 0) notes.push_back(HumanCount(double(s.truncated)) + " truncated");
    if (!notes.empty()) {
      v += " (" + notes[0];
      for (size_t i = 1; i < notes.size(); ++i) v += ", " + notes[i];
      v += ")";
    }
    rows.push_back({"data", "samples", v});
  }
  if (s.tokens >= 0) {
    std::string v = HumanCount(double(s.tokens));
    if (std::isfinite(s.masked_fraction)) v += " (" + Percent(s.masked_fraction) + " masked)";
    rows.push_back({"data", "tokens", v});
  }
  if (s.memory_estimate_bytes >= 0) {
    rows.push_back({"memory", "estimate", HumanBytes(double(s.memory_estimate_bytes))});
  }
  // Extra rows go after the last row of their section, or at the end in a new section.
  for (const auto& row : s.extra) {
    auto last = std::find_if(rows.rbegin(), rows.rend(),
                             [&](const RunSummary::Row& r) { return r.section == row.section; });
    if (last == rows.rend()) {
      rows.push_back(row);
    } else {
      rows.insert(last.base(), row);
    }
  }
  return rows;
}

void PrintRunSummary(std::FILE* out, const RunSummary& s) {
  const auto rows = SummaryRows(s);
  size_t section_w = 0, label_w = 0;
  for (const auto& r : rows) {
    section_w = std::max(section_w, r.section.size());
    label_w = std::max(label_w, r.label.size());
  }
  const std::string* previous = nullptr;
  for (const auto& r : rows) {
    const std::string section = previous && *previous == r.section ? "" : r.section;
    std::fprintf(out, "%-*s  %-*s  %s\n", int(section_w), section.c_str(), int(label_w),
                 r.label.c_str(), r.value.c_str());
    previous = &r.section;
  }
  std::fflush(out);
}

}  // namespace xt
