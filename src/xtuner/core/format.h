// Numbers in messages.
#pragma once

#include <cstdio>
#include <string>

namespace xt {

// `x` as printf's "%g" writes it: "0.001", "1e-05", "3".
inline std::string FormatG(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%g", x);
  return buf;
}

}  // namespace xt
