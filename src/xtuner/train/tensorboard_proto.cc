#include "xtuner/train/tensorboard_proto.h"

#include <cstring>

#include "xtuner/train/tensorboard_crc32c.h"

namespace xt::tensorboard {

namespace {

enum WireType { kVarint = 0, kFixed64 = 1, kLengthDelimited = 2, kFixed32 = 5 };

// Event fields.
constexpr int kEventWallTime = 1, kEventStep = 2, kEventFileVersion = 3, kEventSummary = 5,
              kEventSessionLog = 7;
constexpr int kSummaryValue = 1;                         // Summary.value
constexpr int kValueTag = 1, kValueSimpleValue = 2;      // Summary.Value
constexpr int kSessionLogStatus = 1, kSessionStart = 1;  // SessionLog.status, START

void AppendLittleEndian(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(char((v >> (8 * i)) & 0xFF));
}

}  // namespace

void ProtoWriter::RawVarint(uint64_t v) {
  while (v >= 0x80) {
    out_.push_back(char((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out_.push_back(char(v));
}

void ProtoWriter::Varint(int field, uint64_t value) {
  Key(field, kVarint);
  RawVarint(value);
}

void ProtoWriter::Double(int field, double value) {
  Key(field, kFixed64);
  uint64_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  AppendLittleEndian(&out_, bits, 8);
}

void ProtoWriter::Float(int field, float value) {
  Key(field, kFixed32);
  uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  AppendLittleEndian(&out_, bits, 4);
}

void ProtoWriter::Bytes(int field, std::string_view bytes) {
  Key(field, kLengthDelimited);
  RawVarint(bytes.size());
  out_.append(bytes);
}

std::string FileVersionEvent(double wall_time, std::string_view version) {
  ProtoWriter e;
  e.Double(kEventWallTime, wall_time);
  e.Bytes(kEventFileVersion, version);  // step 0 is the default: not written
  return e.bytes();
}

std::string ScalarsEvent(double wall_time, int64_t step,
                         const std::vector<std::pair<std::string, double>>& values) {
  ProtoWriter summary;
  for (const auto& [tag, value] : values) {
    ProtoWriter v;
    v.Bytes(kValueTag, tag);
    v.Float(kValueSimpleValue, float(value));
    summary.Bytes(kSummaryValue, v.bytes());
  }
  ProtoWriter e;
  e.Double(kEventWallTime, wall_time);
  e.Varint(kEventStep, uint64_t(step));
  e.Bytes(kEventSummary, summary.bytes());
  return e.bytes();
}

std::string SessionStartEvent(double wall_time, int64_t step) {
  ProtoWriter log;
  log.Varint(kSessionLogStatus, kSessionStart);
  ProtoWriter e;
  e.Double(kEventWallTime, wall_time);
  e.Varint(kEventStep, uint64_t(step));
  e.Bytes(kEventSessionLog, log.bytes());
  return e.bytes();
}

std::string TfRecord(std::string_view data) {
  std::string out;
  out.reserve(data.size() + 16);
  AppendLittleEndian(&out, data.size(), 8);
  AppendLittleEndian(&out, Crc32cMask(Crc32c(out.data(), 8)), 4);
  out.append(data);
  AppendLittleEndian(&out, Crc32cMask(Crc32c(data.data(), data.size())), 4);
  return out;
}

}  // namespace xt::tensorboard
