// The bytes of a TensorBoard event file, without protobuf: the few messages we write, encoded by
// hand in the protobuf wire format, and their TFRecord framing.
//
// The messages (tensorflow/core/util/event.proto, framework/summary.proto; fields we use only):
//   Event      { double wall_time = 1; int64 step = 2; oneof what { string file_version = 3;
//                Summary summary = 5; SessionLog session_log = 7; } }
//   Summary    { repeated Value value = 1; }
//   Value      { string tag = 1; oneof value { float simple_value = 2; } }
//   SessionLog { SessionStatus status = 1; }   (START = 1)
// Wire format: each field is a key varint (field_number << 3 | wire_type) then its value:
// wire type 0 = varint (int64 as 64-bit two's complement, so a negative step takes 10 bytes),
// 1 = 8 bytes little-endian (double), 2 = varint length + bytes (string, submessage),
// 5 = 4 bytes little-endian (float).
//
// TFRecord framing of each serialized Event:
//   uint64 length (LE) | uint32 masked CRC-32C of those 8 bytes | data | uint32 masked CRC of data
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace xt::tensorboard {

// Appends protobuf fields to a byte string.
class ProtoWriter {
 public:
  void Varint(int field, uint64_t value);
  void Double(int field, double value);           // wire type 1
  void Float(int field, float value);             // wire type 5
  void Bytes(int field, std::string_view bytes);  // wire type 2: strings and submessages
  const std::string& bytes() const { return out_; }

 private:
  void RawVarint(uint64_t v);
  void Key(int field, int wire_type) { RawVarint(uint64_t(field) << 3 | uint64_t(wire_type)); }
  std::string out_;
};

// Event{wall_time, step = 0, file_version}: the first record of every event file.
std::string FileVersionEvent(double wall_time, std::string_view version = "brain.Event:2");
// Event{wall_time, step, summary{value{tag, simple_value}...}}: scalars, stored as float32.
std::string ScalarsEvent(double wall_time, int64_t step,
                         const std::vector<std::pair<std::string, double>>& values);
// Event{wall_time, step, session_log{status: START}}: tells TensorBoard that a (re)started run
// writes from `step` on, so it discards points at step >= `step` left by an earlier attempt.
std::string SessionStartEvent(double wall_time, int64_t step);

// The TFRecord framing of one record (see above).
std::string TfRecord(std::string_view data);

}  // namespace xt::tensorboard
