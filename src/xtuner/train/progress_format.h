// Numbers for people: the short forms the progress line and the run summary print.
#pragma once

#include <cstdint>
#include <string>

namespace xt {

// Decimal units with one decimal: 999 -> "999", 1234 -> "1.2K", 30532134912 -> "30.5B",
// 1.5e12 -> "1.5T" (K, M, B, T; B for billion, as parameter counts are written). A value that
// rounds up to 1000 of a unit moves to the next (999960 -> "1.0M"). Negative values keep "-".
std::string HumanCount(double n);

// Binary units with one decimal: 512 -> "512 B", 1536 -> "1.5 KiB", 3.4 * 2^30 -> "3.4 GiB"
// (B, KiB, MiB, GiB, TiB, PiB).
std::string HumanBytes(double bytes);

// Seconds as H:MM:SS, rounded to the second: 201 -> "0:03:21", 90061 -> "25:01:01".
// Negative or non-finite: "-:--:--" (unknown).
std::string FormatDuration(double seconds);

// A learning rate in short scientific form: 1e-4 -> "1.0e-4", 2.5e-5 -> "2.5e-5", 0 -> "0",
// 3 -> "3.0e+0"; NaN -> "nan".
std::string FormatSci(double x);

// The loss and similar: 4 significant digits ("2.345", "0.01234", "12.35"); NaN -> "nan".
std::string FormatLoss(double x);

}  // namespace xt
