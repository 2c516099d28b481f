// Status and Result<T>: how every function that touches the outside world (files, configs,
// the network) reports failure. A Status is OK or carries one human-readable message that names
// the file, line, key or tensor at fault. Internal invariants use XT_CHECK instead (abort).
#pragma once

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace xt {

class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  static Status OK() { return Status(); }
  static Status Error(std::string msg) { return Status(std::move(msg)); }

  bool ok() const { return !msg_.has_value(); }
  const std::string& message() const {
    static const std::string kOk = "OK";
    return msg_ ? *msg_ : kOk;
  }
  // Returns a copy whose message is "<prefix>: <message>" (no-op on OK).
  Status With(const std::string& prefix) const {
    return ok() ? *this : Status(prefix + ": " + *msg_);
  }

 private:
  explicit Status(std::string msg) : msg_(std::move(msg)) {}
  std::optional<std::string> msg_;
};

// Holds either a value or an error Status. value() on an error aborts.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit on purpose
  Result(Status status) : status_(std::move(status)) {  // NOLINT
    if (status_.ok()) status_ = Status::Error("Result built from an OK status without a value");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & {
    Check();
    return *value_;
  }
  const T& value() const& {
    Check();
    return *value_;
  }
  T&& value() && {
    Check();
    return std::move(*value_);
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }

 private:
  void Check() const {
    if (!value_) {
      std::fprintf(stderr, "xtuner: Result::value() on error: %s\n", status_.message().c_str());
      std::abort();
    }
  }
  std::optional<T> value_;
  Status status_;
};

[[noreturn]] void CheckFailed(const char* file, int line, const char* cond, const std::string& msg);

}  // namespace xt

#define XT_CONCAT_INNER(a, b) a##b
#define XT_CONCAT(a, b) XT_CONCAT_INNER(a, b)

// Returns the Status of `expr` from the enclosing function if it is an error.
#define XT_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::xt::Status xt_status_ = (expr);        \
    if (!xt_status_.ok()) return xt_status_; \
  } while (0)

// `lhs = value of Result expr`, or return its Status from the enclosing function.
#define XT_ASSIGN_OR_RETURN(lhs, expr) \
  XT_ASSIGN_OR_RETURN_IMPL(XT_CONCAT(xt_result_, __LINE__), lhs, expr)
#define XT_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                             \
  if (!tmp.ok()) return tmp.status();            \
  lhs = std::move(tmp).value()

// Internal invariant: a failure is a bug in xtuner, never bad user input.
#define XT_CHECK(cond, ...)                                                                     \
  do {                                                                                          \
    if (!(cond)) ::xt::CheckFailed(__FILE__, __LINE__, #cond, ::xt::CheckMessage(__VA_ARGS__)); \
  } while (0)

namespace xt {
inline std::string CheckMessage() { return ""; }
inline std::string CheckMessage(const std::string& s) { return s; }
}  // namespace xt
