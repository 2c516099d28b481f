#include "xtuner/train/progress_format.h"

#include <cmath>
#include <cstdio>

namespace xt {

namespace {

// v scaled down by `base` until it prints (one decimal) below `base`; suffix from `units`.
std::string Scaled(double v, double base, const char* const* units, int num_units,
                   const char* sep) {
  char buf[64];
  const char* sign = v < 0 ? "-" : "";
  v = std::fabs(v);
  if (std::round(v) < base) {
    std::snprintf(buf, sizeof buf, "%s%.0f%s%s", sign, v, *units[0] ? sep : "", units[0]);
    return buf;
  }
  int u = 1;
  v /= base;
  while (u + 1 < num_units && std::round(v * 10) / 10 >= base) {
    v /= base;
    ++u;
  }
  std::snprintf(buf, sizeof buf, "%s%.1f%s%s", sign, v, sep, units[u]);
  return buf;
}

}  // namespace

std::string HumanCount(double n) {
  if (!std::isfinite(n)) return "nan";
  static const char* const kUnits[] = {"", "K", "M", "B", "T"};
  return Scaled(n, 1000.0, kUnits, 5, "");
}

std::string HumanBytes(double bytes) {
  if (!std::isfinite(bytes)) return "nan";
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  return Scaled(bytes, 1024.0, kUnits, 6, " ");
}

std::string FormatDuration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "-:--:--";
  const long long s = std::llround(seconds);
  char buf[48];
  std::snprintf(buf, sizeof buf, "%lld:%02lld:%02lld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

std::string FormatSci(double x) {
  if (std::isnan(x)) return "nan";
  if (x == 0) return "0";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  int e = int(std::floor(std::log10(std::fabs(x))));
  double m = x / std::pow(10.0, e);
  if (std::fabs(std::round(m * 10) / 10) >= 10) {  // 9.96e-5 prints as 1.0e-4
    m /= 10;
    ++e;
  }
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.1fe%+d", m, e);
  return buf;
}

std::string FormatLoss(double x) {
  if (std::isnan(x)) return "nan";
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.4g", x);
  return buf;
}

}  // namespace xt
