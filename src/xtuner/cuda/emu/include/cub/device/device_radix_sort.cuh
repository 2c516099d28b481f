// The CUDA emulator's cub::DeviceRadixSort::SortPairs (the one CUB call the engine makes): a
// stable sort of (key, value) pairs on the key bits [begin_bit, end_bit), signed keys ordered as
// CUB orders them (the sign bit flipped). The size query asks for a small temporary.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <numeric>
#include <type_traits>
#include <vector>

namespace cub {

struct DeviceRadixSort {
  template <class KeyT, class ValueT, class NumItemsT>
  static cudaError_t SortPairs(void* temp, size_t& temp_bytes, const KeyT* keys_in, KeyT* keys_out,
                               const ValueT* values_in, ValueT* values_out, NumItemsT num_items,
                               int begin_bit = 0, int end_bit = int(sizeof(KeyT) * 8),
                               cudaStream_t = nullptr) {
    static_assert(std::is_integral_v<KeyT> && sizeof(KeyT) <= 8, "integer keys");
    if (temp == nullptr) {
      temp_bytes = 256;
      return cudaSuccess;
    }
    if (num_items < 0 || begin_bit < 0 || end_bit > int(sizeof(KeyT) * 8) || begin_bit > end_bit)
      return cudaErrorInvalidValue;
    using U = std::make_unsigned_t<KeyT>;
    const int width = end_bit - begin_bit;
    const uint64_t mask = width >= 64 ? ~uint64_t(0) : (uint64_t(1) << width) - 1;
    auto radix = [&](KeyT k) {
      U u = U(k);
      if constexpr (std::is_signed_v<KeyT>) u ^= U(U(1) << (sizeof(KeyT) * 8 - 1));
      return (uint64_t(u) >> begin_bit) & mask;
    };
    const size_t n = size_t(num_items);
    std::vector<size_t> order(n);
    std::iota(order.begin(), order.end(), size_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return radix(keys_in[a]) < radix(keys_in[b]); });
    std::vector<KeyT> k(n);
    std::vector<ValueT> v(n);
    for (size_t i = 0; i < n; ++i) k[i] = keys_in[order[i]], v[i] = values_in[order[i]];
    std::copy(k.begin(), k.end(), keys_out);
    std::copy(v.begin(), v.end(), values_out);
    return cudaSuccess;
  }
};

}  // namespace cub
