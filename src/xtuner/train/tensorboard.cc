#include "xtuner/train/tensorboard.h"

#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "xtuner/train/tensorboard_proto.h"

namespace xt {

namespace {

double SystemSeconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string Hostname() {
  char buf[256] = {};
  if (gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return "localhost";
  std::string h = buf;
  for (char& c : h) {
    if (c == '/') c = '_';  // never a path separator in a file name
  }
  return h;
}

}  // namespace

TensorBoardWriter::TensorBoardWriter(std::string path, std::FILE* f)
    : path_(std::move(path)), f_(f), clock_(SystemSeconds) {}

TensorBoardWriter::~TensorBoardWriter() { std::fclose(f_); }

Result<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return Status::Error(dir + ": cannot create the TensorBoard directory: " + ec.message());
  char stamp[32];
  std::snprintf(stamp, sizeof stamp, "%010lld", static_cast<long long>(std::time(nullptr)));
  const std::string base = dir + "/events.out.tfevents." + stamp + "." + Hostname();
  std::string path;
  std::FILE* f = nullptr;
  for (int n = 0; n < 1000 && !f; ++n) {
    path = n == 0 ? base : base + "." + std::to_string(n);
    f = std::fopen(path.c_str(), "wbx");  // exclusive: never append to another writer's file
    if (!f && errno != EEXIST) {
      return Status::Error(path + ": cannot create the event file: " + std::strerror(errno));
    }
  }
  if (!f) return Status::Error(base + ": cannot create the event file: every name is taken");
  std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(path, f));
  XT_RETURN_IF_ERROR(w->Write(tensorboard::FileVersionEvent(w->clock_())));
  XT_RETURN_IF_ERROR(w->Flush());
  return w;
}

Status TensorBoardWriter::Write(const std::string& event) {
  if (!error_.ok()) return error_;
  const std::string record = tensorboard::TfRecord(event);
  if (std::fwrite(record.data(), 1, record.size(), f_) != record.size()) {
    error_ = Status::Error(path_ + ": cannot write an event: " + std::strerror(errno));
  }
  return error_;
}

Status TensorBoardWriter::AddScalar(const std::string& tag, int64_t step, double value) {
  return AddScalars(step, {{tag, value}});
}

Status TensorBoardWriter::AddScalars(int64_t step,
                                     const std::vector<std::pair<std::string, double>>& values) {
  if (values.empty()) return error_;
  return Write(tensorboard::ScalarsEvent(clock_(), step, values));
}

Status TensorBoardWriter::AddSessionStart(int64_t step) {
  return Write(tensorboard::SessionStartEvent(clock_(), step));
}

Status TensorBoardWriter::Flush() {
  if (!error_.ok()) return error_;
  if (std::fflush(f_) != 0) {
    error_ = Status::Error(path_ + ": cannot flush events: " + std::strerror(errno));
  }
  return error_;
}

}  // namespace xt
