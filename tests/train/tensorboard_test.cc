// TensorBoard event files: CRC-32C against published vectors, the protobuf/TFRecord bytes
// against records serialized by the real tensorboard package (event_pb2 + its masked_crc32c),
// and a written file decoded back by a small independent reader.
//
// With XT_TENSORBOARD_OUT=<dir> set, TensorBoardWriter.WritesADemoRun writes its file there, for
// tools/tensorboard/check_events.py to read with the real tensorboard package.
#include "xtuner/train/tensorboard.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cctype>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "util/testing.h"
#include "xtuner/train/metrics.h"
#include "xtuner/train/tensorboard_crc32c.h"
#include "xtuner/train/tensorboard_proto.h"

namespace xt {
namespace {

// ---- CRC-32C ----

uint32_t Crc(const std::string& s) { return Crc32c(s.data(), s.size()); }

TEST(Crc32c, KnownVectors) {
  // The check value of CRC-32C, and RFC 3720 (iSCSI) appendix B.4.
  EXPECT_EQ(Crc("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc(""), 0u);
  EXPECT_EQ(Crc(std::string(32, '\x00')), 0x8A9136AAu);
  EXPECT_EQ(Crc(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string up, down;
  for (int i = 0; i < 32; ++i) up.push_back(char(i)), down.push_back(char(31 - i));
  EXPECT_EQ(Crc(up), 0x46DD794Eu);
  EXPECT_EQ(Crc(down), 0x113FDB5Cu);
  const uint8_t iscsi_read[48] = {0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                  0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00,
                                  0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00,
                                  0x00, 0x18, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
                                  0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00};
  EXPECT_EQ(Crc32c(iscsi_read, sizeof iscsi_read), 0xD9963A56u);
}

TEST(Crc32c, ExtendAndMask) {
  const std::string a = "hello ", b = "world";
  EXPECT_EQ(Crc32cExtend(Crc(a), b.data(), b.size()), Crc(a + b));
  const uint32_t crc = Crc("foo");
  EXPECT_NE(Crc32cMask(crc), crc);
  EXPECT_NE(Crc32cMask(Crc32cMask(crc)), Crc32cMask(crc));
  EXPECT_EQ(Crc32cUnmask(Crc32cMask(crc)), crc);
  EXPECT_EQ(Crc32cUnmask(Crc32cUnmask(Crc32cMask(Crc32cMask(crc)))), crc);
}

// ---- the bytes, against the real tensorboard package ----

std::string Bytes(std::initializer_list<int> b) {
  std::string s;
  for (int c : b) s.push_back(char(c));
  return s;
}

TEST(TensorBoardProto, VarintsAndFixedWidths) {
  tensorboard::ProtoWriter w;
  w.Varint(1, 300);
  EXPECT_EQ(w.bytes(), Bytes({0x08, 0xAC, 0x02}));
  tensorboard::ProtoWriter neg;
  neg.Varint(2, uint64_t(int64_t(-1)));  // int64 -1: ten bytes
  EXPECT_EQ(neg.bytes(), Bytes({0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x01}));
  tensorboard::ProtoWriter f;
  f.Float(2, 2.5f);
  f.Double(1, 1.5);
  f.Bytes(1, "ab");
  EXPECT_EQ(f.bytes(), Bytes({0x15, 0x00, 0x00, 0x20, 0x40, 0x09, 0, 0, 0, 0, 0, 0, 0xF8, 0x3F,
                              0x0A, 0x02, 'a', 'b'}));
}

// Golden records: event_pb2.Event(...).SerializeToString() framed with tensorboard's own
// masked_crc32c (tensorboard 2.21, tensorboard.compat.tensorflow_stub.pywrap_tensorflow).
TEST(TensorBoardProto, RecordsMatchTheTensorBoardPackage) {
  // Event(wall_time=1.5, file_version="brain.Event:2")
  const std::string file_version(
      "\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7f\x4b\x22\x09\x00\x00\x00\x00\x00\x00\xf8\x3f\x1a"
      "\x0d\x62\x72\x61\x69\x6e\x2e\x45\x76\x65\x6e\x74\x3a\x32\x2a\x28\x64\x6c",
      40);
  EXPECT_EQ(tensorboard::TfRecord(tensorboard::FileVersionEvent(1.5)), file_version);
  // Event(wall_time=2.0, step=7, summary=Summary(value=[Value(tag="train/loss",
  // simple_value=2.5)]))
  const std::string scalar(
      "\x20\x00\x00\x00\x00\x00\x00\x00\x29\xed\xa9\x50\x09\x00\x00\x00\x00\x00\x00\x00\x40\x10"
      "\x07\x2a\x13\x0a\x11\x0a\x0a\x74\x72\x61\x69\x6e\x2f\x6c\x6f\x73\x73\x15\x00\x00\x20\x40"
      "\x9f\x7b\xa4\xf7",
      48);
  EXPECT_EQ(tensorboard::TfRecord(tensorboard::ScalarsEvent(2.0, 7, {{"train/loss", 2.5}})),
            scalar);
  // Event(wall_time=3.0, step=-1, session_log=SessionLog(status=START))
  const std::string start(
      "\x18\x00\x00\x00\x00\x00\x00\x00\xa3\x7f\x4b\x22\x09\x00\x00\x00\x00\x00\x00\x08\x40\x10"
      "\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x3a\x02\x08\x01\x0b\xe5\xb3\xfd",
      40);
  EXPECT_EQ(tensorboard::TfRecord(tensorboard::SessionStartEvent(3.0, -1)), start);
}

// ---- a tiny independent reader ----

struct Reader {
  const std::string& s;
  size_t pos = 0;
  bool done() const { return pos >= s.size(); }
  uint64_t Fixed(int bytes) {
    uint64_t v = 0;
    for (int i = 0; i < bytes; ++i) v |= uint64_t(uint8_t(s.at(pos + i))) << (8 * i);
    pos += bytes;
    return v;
  }
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      const uint8_t b = uint8_t(s.at(pos++));
      v |= uint64_t(b & 0x7F) << shift;
      if (!(b & 0x80)) return v;
    }
  }
  std::string Take(size_t n) {
    std::string out = s.substr(pos, n);
    EXPECT_EQ(out.size(), n);
    pos += n;
    return out;
  }
};

struct DecodedEvent {
  double wall_time = 0;
  int64_t step = 0;
  std::string file_version;
  std::vector<std::pair<std::string, float>> scalars;
  int session_status = 0;
};

// Parses one serialized Event, failing the test on any field it does not expect.
DecodedEvent ParseEvent(const std::string& bytes) {
  DecodedEvent e;
  Reader r{bytes};
  while (!r.done()) {
    const uint64_t key = r.Varint();
    switch (key) {
      case (1 << 3) | 1: {
        const uint64_t bits = r.Fixed(8);
        std::memcpy(&e.wall_time, &bits, 8);
        break;
      }
      case (2 << 3) | 0:
        e.step = int64_t(r.Varint());
        break;
      case (3 << 3) | 2:
        e.file_version = r.Take(r.Varint());
        break;
      case (5 << 3) | 2: {
        const std::string summary = r.Take(r.Varint());
        Reader sr{summary};
        while (!sr.done()) {
          EXPECT_EQ(sr.Varint(), (1u << 3) | 2);  // Summary.value
          const std::string value = sr.Take(sr.Varint());
          Reader vr{value};
          std::string tag;
          float v = 0;
          while (!vr.done()) {
            const uint64_t vkey = vr.Varint();
            if (vkey == ((1 << 3) | 2)) {
              tag = vr.Take(vr.Varint());
            } else {
              EXPECT_EQ(vkey, (2u << 3) | 5);  // simple_value
              const uint32_t bits = uint32_t(vr.Fixed(4));
              std::memcpy(&v, &bits, 4);
            }
          }
          e.scalars.emplace_back(tag, v);
        }
        break;
      }
      case (7 << 3) | 2: {
        const std::string log = r.Take(r.Varint());
        Reader lr{log};
        EXPECT_EQ(lr.Varint(), (1u << 3) | 0);
        e.session_status = int(lr.Varint());
        break;
      }
      default:
        ADD_FAILURE() << "unexpected field key " << key;
        return e;
    }
  }
  return e;
}

// Reads every TFRecord of a file, checking lengths and both CRCs.
std::vector<DecodedEvent> ReadEvents(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string s = ss.str();
  std::vector<DecodedEvent> events;
  Reader r{s};
  while (!r.done()) {
    const std::string header = s.substr(r.pos, 8);
    const uint64_t len = r.Fixed(8);
    EXPECT_EQ(Crc32cUnmask(uint32_t(r.Fixed(4))), Crc(header)) << "header CRC";
    const std::string data = r.Take(len);
    EXPECT_EQ(Crc32cUnmask(uint32_t(r.Fixed(4))), Crc(data)) << "data CRC";
    events.push_back(ParseEvent(data));
  }
  return events;
}

// ---- the writer ----

TEST(TensorBoardWriter, WritesScalarsThatDecode) {
  const std::string dir = testing::TempDir("tb") + "/run";  // created by Open
  auto w = TensorBoardWriter::Open(dir);
  ASSERT_TRUE(w.ok()) << w.status().message();
  const std::string name = std::filesystem::path((*w)->path()).filename().string();
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::string prefix = "events.out.tfevents.";  // then 10 digits of seconds, '.', host
  ASSERT_GT(name.size(), prefix.size() + 11) << name;
  EXPECT_EQ(name.substr(0, prefix.size()), prefix);
  for (size_t i = prefix.size(); i < prefix.size() + 10; ++i) EXPECT_TRUE(std::isdigit(name[i]));
  EXPECT_EQ(name[prefix.size() + 10], '.');
  EXPECT_EQ(name.substr(name.size() - std::strlen(host)), host);

  double now = 1000.0;
  (*w)->SetClockForTesting([&] { return now += 1; });
  ASSERT_TRUE((*w)->AddSessionStart(1).ok());
  ASSERT_TRUE((*w)->AddScalar("train/loss", 1, 2.5).ok());
  ASSERT_TRUE((*w)->AddScalars(2, {{"train/loss", 2.25}, {"train/lr", 1e-4}}).ok());
  ASSERT_TRUE((*w)->AddScalars(3, {}).ok());  // nothing to write
  ASSERT_TRUE((*w)->AddScalar("train/loss", -5, -0.5).ok());
  ASSERT_TRUE((*w)->Flush().ok());

  const auto ev = ReadEvents((*w)->path());
  ASSERT_EQ(ev.size(), 5u);
  EXPECT_EQ(ev[0].file_version, "brain.Event:2");
  EXPECT_EQ(ev[0].step, 0);
  EXPECT_GT(ev[0].wall_time, 1.6e9);  // the real clock: after 2020
  EXPECT_EQ(ev[1].session_status, 1);
  EXPECT_EQ(ev[1].step, 1);
  EXPECT_EQ(ev[1].wall_time, 1001.0);
  EXPECT_EQ(ev[2].step, 1);
  EXPECT_EQ(ev[2].wall_time, 1002.0);
  EXPECT_EQ(ev[2].scalars, (std::vector<std::pair<std::string, float>>{{"train/loss", 2.5f}}));
  EXPECT_EQ(ev[3].step, 2);
  EXPECT_EQ(ev[3].scalars, (std::vector<std::pair<std::string, float>>{{"train/loss", 2.25f},
                                                                       {"train/lr", 1e-4f}}));
  EXPECT_EQ(ev[4].step, -5);
  EXPECT_EQ(ev[4].scalars[0].second, -0.5f);
}

TEST(TensorBoardWriter, EachOpenGetsItsOwnFile) {
  const std::string dir = testing::TempDir("tb");
  auto a = TensorBoardWriter::Open(dir);
  auto b = TensorBoardWriter::Open(dir);  // same second, same host
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE((*a)->path(), (*b)->path());
  ASSERT_TRUE((*a)->AddScalar("x", 1, 1).ok() && (*a)->Flush().ok());
  ASSERT_TRUE((*b)->Flush().ok());
  EXPECT_EQ(ReadEvents((*a)->path()).size(), 2u);
  EXPECT_EQ(ReadEvents((*b)->path()).size(), 1u);
}

TEST(TensorBoardWriter, UncreatableDirectoryIsNamed) {
  const std::string file = testing::TempDir("tb") + "/a_file";
  std::ofstream(file) << "x";
  auto w = TensorBoardWriter::Open(file + "/run");
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().message().rfind(file + "/run: cannot create the TensorBoard directory", 0),
            0u)
      << w.status().message();
}

// A short run as the trainer will log it, including a resume that rewinds two steps. Read back
// here; with XT_TENSORBOARD_OUT set, left there for tools/tensorboard/check_events.py.
TEST(TensorBoardWriter, WritesADemoRun) {
  const char* out = std::getenv("XT_TENSORBOARD_OUT");
  const std::string dir = out && *out ? std::string(out) : testing::TempDir("tb");
  auto log_steps = [&](int64_t from, int64_t to, double shift) {
    auto w = TensorBoardWriter::Open(dir);
    ASSERT_TRUE(w.ok()) << w.status().message();
    ASSERT_TRUE((*w)->AddSessionStart(from).ok());
    for (int64_t s = from; s <= to; ++s) {
      StepMetrics m;
      m.step = s;
      m.loss = 3.0 / double(s) + shift;
      m.ce_loss = m.loss - 0.01;
      m.aux_loss = 1.0 + 0.01 * double(s);
      m.grad_norm = 1.0;
      m.lr = 1e-4 * double(s) / 5.0;
      m.tokens = 4096;
      m.tokens_per_s = 1000.0 + double(s);
      m.tflops = 100.0;
      m.mfu = 0.1;
      m.tokens_per_expert = {{1, 2, 3, 6}};
      m.max_expert_violation = 1.0;
      m.max_expert_violation_worst = 1.0;
      m.peak_memory_bytes = int64_t(3) << 30;
      m.masked_fraction = 0.25;
      m.step_time_s = 0.5;
      ASSERT_TRUE((*w)->AddScalars(s, DashboardScalars(m)).ok());
    }
    ASSERT_TRUE((*w)->Flush().ok());
  };
  log_steps(1, 5, 100.0);  // crashed after step 5; the checkpoint was step 3
  log_steps(4, 6, 0.0);    // resumed: steps 4..6 again, 4 and 5 with other values
  size_t files = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    ++files;
    EXPECT_GE(ReadEvents(entry.path().string()).size(), 5u);
  }
  EXPECT_GE(files, 2u);
}

}  // namespace
}  // namespace xt
