#include "xtuner/dist/host_memory.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace xt {

int64_t AvailableHostMemory() {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (!f) return -1;
  char line[256];
  int64_t kib = -1;
  while (std::fgets(line, sizeof line, f)) {
    long long v = 0;
    if (std::sscanf(line, "MemAvailable: %lld kB", &v) == 1) {
      kib = v;
      break;
    }
  }
  std::fclose(f);
  return kib < 0 ? -1 : kib * 1024;
}

double HostId(const void* extra, size_t extra_bytes) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&h](const void* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<const uint8_t*>(p)[i]) * 1099511628211ull;
  };
  char name[256] = {0};
  gethostname(name, sizeof name - 1);
  mix(name, std::strlen(name));
  if (extra) mix(extra, extra_bytes);
  return double(h >> 12);
}

std::vector<double> AllRankIds(Comm& group, double id) {
  std::vector<double> ids(size_t(group.size()), 0.0);
  ids[size_t(group.rank())] = id;
  group.AllReduceSum(ids.data(), int64_t(ids.size()));
  return ids;
}

int RanksOnThisHost(Comm& group) {
  const double mine = HostId();
  const std::vector<double> ids = AllRankIds(group, mine);
  return int(std::count(ids.begin(), ids.end(), mine));
}

}  // namespace xt
