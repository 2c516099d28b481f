// UTF-8 validation, for text from outside (dataset lines, tensor names, metadata).
#pragma once

#include <cstddef>
#include <string_view>

namespace xt {

// The byte offset of the first invalid UTF-8 sequence in `s` (overlong forms, surrogates and
// code points past U+10FFFF are invalid), or std::string_view::npos when it is all valid.
size_t FindInvalidUtf8(std::string_view s);

}  // namespace xt
