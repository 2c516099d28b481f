// The reading half of safetensors.h: SafetensorsFile and SafetensorsCheckpoint
// (writing: safetensors_write.cc).
#include "xtuner/core/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string_view>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/mapped_file.h"

namespace xt {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kMaxHeaderBytes = 100'000'000;  // the reference implementation's limit
constexpr int kMaxJsonDepth = 32;                  // a valid header needs 3

// Every safetensors dtype with a whole-byte element size, and that size.
struct DtypeSpec {
  const char* name;
  size_t size;
};
constexpr DtypeSpec kDtypes[] = {
    {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E4M3", 1}, {"F8_E5M2", 1}, {"F8_E8M0", 1},
    {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
    {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8},     {"C64", 8},
};

std::optional<size_t> SafetensorsDtypeSize(std::string_view name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return d.size;
  }
  return std::nullopt;
}

std::string KnownDtypes() {
  std::string s;
  for (const auto& d : kDtypes) {
    if (!s.empty()) s += ", ";
    s += d.name;
  }
  return s;
}

// A JSON value for an error message, shortened.
std::string Brief(const json& v) {
  std::string s = DumpJson(v);
  if (s.size() > 80) s = s.substr(0, 77) + "...";
  return s;
}

// "an array", "a number", ...: for "it is <...>" in messages.
std::string KindOf(const json& v) {
  std::string t = v.type_name();
  if (t == "null") return t;
  return (t == "array" || t == "object" ? "an " : "a ") + t;
}

// A safetensors header or index: no key twice in one object (nlohmann would keep the last
// silently), no deeper nesting than kMaxJsonDepth.
JsonLimits HeaderLimits(const std::string& top_level_key) {
  JsonLimits limits;
  limits.max_depth = kMaxJsonDepth;
  limits.unique_keys = true;
  limits.top_level_key = top_level_key;
  return limits;
}

// A non-negative integer that fits in int64, or nothing.
std::optional<uint64_t> NonNegativeInt(const json& v) {
  if (v.is_number_unsigned()) {
    uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return u;
  }
  if (v.is_number_integer()) {
    int64_t i = v.get<int64_t>();
    if (i < 0) return std::nullopt;
    return uint64_t(i);
  }
  return std::nullopt;
}

// How a header describes one tensor, after validation.
struct Entry {
  std::string dtype;             // the safetensors spelling
  std::optional<DType> xt_type;  // set when xtuner can hold it
  size_t elem_size = 0;
  Shape shape;
  uint64_t begin = 0, end = 0;  // relative to the data buffer
};

Status ParseEntry(const json& v, uint64_t buffer_size, uint64_t file_size, uint64_t header_size,
                  Entry* out) {
  if (!v.is_object()) {
    return Status::Error("entry is not a JSON object (it is " + KindOf(v) + ")");
  }
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string()) return Status::Error("\"dtype\" missing or not a string");
  out->dtype = dt->get<std::string>();
  auto size = SafetensorsDtypeSize(out->dtype);
  if (!size) {
    return Status::Error("unknown dtype '" + out->dtype +
                         "' (safetensors dtypes: " + KnownDtypes() + ")");
  }
  out->elem_size = *size;
  out->xt_type = DTypeFromName(out->dtype);

  auto sh = v.find("shape");
  if (sh == v.end() || !sh->is_array()) {
    return Status::Error("\"shape\" missing or not a list" +
                         (sh == v.end() ? std::string() : " (got " + Brief(*sh) + ")"));
  }
  // The product of the non-zero dimensions bounds every partial product NumElements() forms,
  // so checking it here keeps all later size arithmetic free of overflow.
  uint64_t bytes = out->elem_size;
  bool overflow = false;
  for (const auto& d : *sh) {
    auto n = NonNegativeInt(d);
    if (!n) {
      return Status::Error("\"shape\" must be a list of non-negative integers, got " + Brief(*sh));
    }
    out->shape.push_back(int64_t(*n));
    if (*n != 0 && __builtin_mul_overflow(bytes, *n, &bytes)) overflow = true;
  }
  if (overflow || bytes > uint64_t(std::numeric_limits<int64_t>::max())) {
    return Status::Error("shape " + ShapeString(out->shape) + " is impossibly large");
  }
  if (NumElements(out->shape) == 0) bytes = 0;

  auto off = v.find("data_offsets");
  std::optional<uint64_t> b, e;
  if (off != v.end() && off->is_array() && off->size() == 2) {
    b = NonNegativeInt((*off)[0]);
    e = NonNegativeInt((*off)[1]);
  }
  if (!b || !e) {
    return Status::Error("\"data_offsets\" must be two non-negative integers [begin, end], got " +
                         (off == v.end() ? std::string("nothing") : Brief(*off)));
  }
  out->begin = *b;
  out->end = *e;
  std::string range = "data_offsets [" + std::to_string(*b) + ", " + std::to_string(*e) + "]";
  if (*b > *e) return Status::Error(range + " have begin > end");
  if (*e > buffer_size) {
    return Status::Error(range + " run past the end of the data buffer, which holds " +
                         std::to_string(buffer_size) + " bytes (file " + std::to_string(file_size) +
                         " bytes, header " + std::to_string(header_size) +
                         " bytes): the file is truncated or corrupt");
  }
  if (*e - *b != bytes) {
    return Status::Error(range + " span " + std::to_string(*e - *b) + " bytes, but dtype " +
                         out->dtype + " and shape " + ShapeString(out->shape) + " need " +
                         std::to_string(bytes));
  }
  return Status::OK();
}

// double -> float with IEEE overflow to infinity (a plain cast of an out-of-range double is UB).
float NarrowToFloat(double d) {
  if (std::isfinite(d) && std::fabs(d) > double(std::numeric_limits<float>::max())) {
    return d > 0 ? std::numeric_limits<float>::infinity() : -std::numeric_limits<float>::infinity();
  }
  return float(d);
}

std::string ShortFileMessage(size_t size) {
  return "file is " + std::to_string(size) + " bytes, shorter than the 8-byte header length field";
}

// Reads 2-, 4- or 8-byte values at possibly unaligned addresses.
template <class T>
T Load(const uint8_t* p, int64_t i) {
  T v;
  std::memcpy(&v, p + size_t(i) * sizeof(T), sizeof(T));
  return v;
}

}  // namespace

// ------------------------------------------------------------------------------ SafetensorsFile

struct SafetensorsFile::State {
  std::string path;
  std::shared_ptr<void> keepalive;
  const uint8_t* buffer = nullptr;  // start of the data buffer
  std::map<std::string, Entry> entries;
  std::map<std::string, std::string> metadata;

  std::string Where() const { return "safetensors file '" + path + "'"; }
  std::string Where(const std::string& tensor) const {
    return "tensor '" + tensor + "' in safetensors file '" + path + "'";
  }
  Result<const Entry*> Find(const std::string& name) const {
    auto it = entries.find(name);
    if (it == entries.end()) return Status::Error(Where() + ": no tensor '" + name + "'");
    return &it->second;
  }
  Status CheckShape(const std::string& name, const Entry& e, const Shape& expected) const {
    if (e.shape != expected) {
      return Status::Error(Where(name) + " has shape " + ShapeString(e.shape) + ", expected " +
                           ShapeString(expected));
    }
    return Status::OK();
  }
};

Result<SafetensorsFile> SafetensorsFile::FromBuffer(const std::string& name, const void* data,
                                                    size_t size, std::shared_ptr<void> keepalive) {
  auto state = std::make_shared<State>();
  state->path = name;
  state->keepalive = std::move(keepalive);
  auto fail = [&](const std::string& msg) { return Status::Error(state->Where() + ": " + msg); };

  const auto* bytes = static_cast<const uint8_t*>(data);
  if (size < 8) return fail(ShortFileMessage(size));
  uint64_t header_size;
  std::memcpy(&header_size, bytes, 8);
  if (header_size > kMaxHeaderBytes) {
    return fail("header length " + std::to_string(header_size) + " is over the " +
                std::to_string(kMaxHeaderBytes) + "-byte limit: not a safetensors file?");
  }
  if (header_size > size - 8) {
    return fail("header length " + std::to_string(header_size) + " runs past the end of the " +
                std::to_string(size) + "-byte file: truncated, or not a safetensors file?");
  }
  const uint64_t buffer_size = size - 8 - header_size;
  state->buffer = bytes + 8 + header_size;

  auto parsed =
      ParseJson(std::string_view(reinterpret_cast<const char*>(bytes + 8), size_t(header_size)),
                HeaderLimits("tensor name"));
  if (!parsed.ok()) return fail("header: " + parsed.status().message());
  const json& header = parsed.value();
  if (!header.is_object()) {
    return fail("header is not a JSON object (it is " + KindOf(header) + ")");
  }

  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (value.is_null()) continue;
      if (!value.is_object()) return fail("\"__metadata__\" is not an object of strings");
      for (const auto& [mk, mv] : value.items()) {
        if (!mv.is_string()) {
          return fail("\"__metadata__\" value for key '" + mk + "' is not a string: " + Brief(mv));
        }
        state->metadata[mk] = mv.get<std::string>();
      }
      continue;
    }
    Entry entry;
    Status st = ParseEntry(value, buffer_size, size, header_size, &entry);
    if (!st.ok()) return fail("tensor '" + key + "': " + st.message());
    state->entries.emplace(key, std::move(entry));
  }

  // Overlap check over the non-empty byte ranges, in order of their start.
  std::vector<std::pair<const std::string*, const Entry*>> ranges;
  for (const auto& [name, e] : state->entries) {
    if (e.end > e.begin) ranges.emplace_back(&name, &e);
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const auto& a, const auto& b) { return a.second->begin < b.second->begin; });
  for (size_t i = 1; i < ranges.size(); ++i) {
    const auto& [pn, p] = ranges[i - 1];
    const auto& [cn, c] = ranges[i];
    if (c->begin < p->end) {
      return fail("tensors '" + *pn + "' (bytes " + std::to_string(p->begin) + " to " +
                  std::to_string(p->end) + ") and '" + *cn + "' (bytes " +
                  std::to_string(c->begin) + " to " + std::to_string(c->end) + ") overlap");
    }
  }
  return SafetensorsFile(std::move(state));
}

Result<SafetensorsFile> SafetensorsFile::Open(const std::string& path) {
  XT_ASSIGN_OR_RETURN(std::shared_ptr<const MappedFile> file,
                      MappedFile::Open(path, "safetensors file"));
  if (file->size() < 8)
    return Status::Error("safetensors file '" + path + "': " + ShortFileMessage(file->size()));
  return FromBuffer(path, file->data(), file->size(), std::const_pointer_cast<MappedFile>(file));
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  out.reserve(state_->entries.size());
  for (const auto& kv : state_->entries) out.push_back(kv.first);
  return out;
}

bool SafetensorsFile::contains(const std::string& name) const {
  return state_->entries.count(name) != 0;
}

const std::map<std::string, std::string>& SafetensorsFile::metadata() const {
  return state_->metadata;
}

const std::string& SafetensorsFile::path() const { return state_->path; }

Result<SafetensorsInfo> SafetensorsFile::Info(const std::string& name) const {
  XT_ASSIGN_OR_RETURN(const Entry* e, state_->Find(name));
  SafetensorsInfo info;
  info.dtype = e->dtype;
  info.shape = e->shape;
  info.nbytes = size_t(e->end - e->begin);
  info.data = state_->buffer + e->begin;
  return info;
}

Result<Tensor> SafetensorsFile::Get(const std::string& name) const {
  XT_ASSIGN_OR_RETURN(const Entry* e, state_->Find(name));
  if (!e->xt_type) {
    return Status::Error(
        state_->Where(name) + " has dtype " + e->dtype +
        ", which xtuner tensors cannot hold (F32, BF16, F16, I32, I64, F8_E4M3, U8)");
  }
  const uint8_t* p = state_->buffer + e->begin;
  if (reinterpret_cast<uintptr_t>(p) % e->elem_size != 0) {
    Tensor t = Tensor::Empty(*e->xt_type, e->shape);
    if (t.nbytes()) std::memcpy(t.data(), p, t.nbytes());
    return t;
  }
  return Tensor::Wrap(*e->xt_type, e->shape, const_cast<uint8_t*>(p), state_->keepalive);
}

Result<Tensor> SafetensorsFile::GetF32(const std::string& name, const Shape& expected) const {
  XT_ASSIGN_OR_RETURN(const Entry* e, state_->Find(name));
  XT_RETURN_IF_ERROR(state_->CheckShape(name, *e, expected));
  Tensor t = Tensor::Empty(DType::F32, e->shape);
  float* dst = t.f32();
  const uint8_t* src = state_->buffer + e->begin;
  const int64_t n = t.numel();
  if (e->dtype == "F32") {
    if (n) std::memcpy(dst, src, t.nbytes());
  } else if (e->dtype == "BF16") {
    for (int64_t i = 0; i < n; ++i) dst[i] = Bf16ToF32(Load<uint16_t>(src, i));
  } else if (e->dtype == "F16") {
    for (int64_t i = 0; i < n; ++i) dst[i] = F16ToF32(Load<uint16_t>(src, i));
  } else if (e->dtype == "F64") {
    for (int64_t i = 0; i < n; ++i) dst[i] = NarrowToFloat(Load<double>(src, i));
  } else {
    return Status::Error(state_->Where(name) + " has dtype " + e->dtype +
                         ", expected a float dtype (F32, BF16, F16, F64)");
  }
  return t;
}

Result<std::vector<double>> SafetensorsFile::GetF64(const std::string& name,
                                                    const Shape& expected) const {
  XT_ASSIGN_OR_RETURN(const Entry* e, state_->Find(name));
  XT_RETURN_IF_ERROR(state_->CheckShape(name, *e, expected));
  const int64_t n = NumElements(e->shape);
  const uint8_t* src = state_->buffer + e->begin;
  std::vector<double> out(static_cast<size_t>(n));
  const std::string& d = e->dtype;
  if (d == "F64") {
    for (int64_t i = 0; i < n; ++i) out[i] = Load<double>(src, i);
  } else if (d == "F32") {
    for (int64_t i = 0; i < n; ++i) out[i] = Load<float>(src, i);
  } else if (d == "BF16") {
    for (int64_t i = 0; i < n; ++i) out[i] = Bf16ToF32(Load<uint16_t>(src, i));
  } else if (d == "F16") {
    for (int64_t i = 0; i < n; ++i) out[i] = F16ToF32(Load<uint16_t>(src, i));
  } else if (d == "I32") {
    for (int64_t i = 0; i < n; ++i) out[i] = Load<int32_t>(src, i);
  } else if (d == "I64") {
    for (int64_t i = 0; i < n; ++i) out[i] = double(Load<int64_t>(src, i));
  } else {
    return Status::Error(state_->Where(name) + " has dtype " + d +
                         ", expected F64, F32, BF16, F16, I32 or I64");
  }
  return out;
}

// ------------------------------------------------------------------------ SafetensorsCheckpoint

SafetensorsCheckpoint SafetensorsCheckpoint::FromFile(SafetensorsFile file) {
  SafetensorsCheckpoint ckpt;
  ckpt.path_ = file.path();
  for (const auto& name : file.names()) ckpt.where_[name] = 0;
  ckpt.files_.push_back(std::move(file));
  return ckpt;
}

Result<SafetensorsCheckpoint> SafetensorsCheckpoint::Open(const std::string& path_or_dir) {
  SafetensorsCheckpoint ckpt;
  ckpt.path_ = path_or_dir;
  std::error_code ec;
  fs::path p(path_or_dir);
  fs::path index_path, single_path;
  if (fs::is_directory(p, ec)) {
    if (fs::exists(p / "model.safetensors.index.json", ec)) {
      index_path = p / "model.safetensors.index.json";
    } else if (fs::exists(p / "model.safetensors", ec)) {
      single_path = p / "model.safetensors";
    } else {
      return Status::Error("checkpoint directory '" + path_or_dir +
                           "' holds neither model.safetensors.index.json nor model.safetensors");
    }
  } else if (path_or_dir.ends_with(".index.json")) {
    index_path = p;
  } else {
    single_path = p;
  }

  if (!single_path.empty()) {
    XT_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::Open(single_path.string()));
    SafetensorsCheckpoint one = FromFile(std::move(f));
    one.path_ = path_or_dir;
    return one;
  }

  const std::string where = "checkpoint index '" + index_path.string() + "'";
  auto text = ReadFileToString(index_path.string());
  if (!text.ok()) return text.status().With(where);
  auto parsed = ParseJson(text.value(), HeaderLimits("key"));
  if (!parsed.ok()) return parsed.status().With(where);
  const json& index = parsed.value();
  auto wm = index.is_object() ? index.find("weight_map") : index.end();
  if (!index.is_object() || wm == index.end() || !wm->is_object()) {
    return Status::Error(where + ": no \"weight_map\" object");
  }
  // shard file name -> names the index maps to it
  std::map<std::string, std::vector<std::string>> shards;
  for (const auto& [name, file] : wm->items()) {
    if (!file.is_string() || file.get<std::string>().empty()) {
      return Status::Error(where + ": weight_map entry for tensor '" + name +
                           "' is not a file name: " + Brief(file));
    }
    shards[file.get<std::string>()].push_back(name);
  }
  const fs::path dir = index_path.parent_path();
  for (const auto& [file, tensor_names] : shards) {
    const std::string shard_path = (dir / file).string();
    auto shard = SafetensorsFile::Open(shard_path);
    if (!shard.ok()) {
      return shard.status().With(where + ": shard '" + file + "' (holding tensor '" +
                                 tensor_names.front() + "')");
    }
    for (const auto& name : tensor_names) {
      if (!shard->contains(name)) {
        return Status::Error(where + " maps tensor '" + name + "' to '" + shard_path +
                             "', which does not contain it");
      }
      ckpt.where_[name] = ckpt.files_.size();
    }
    for (const auto& name : shard->names()) {
      auto it = wm->find(name);
      if (it == wm->end()) {
        return Status::Error("tensor '" + name + "' in shard '" + shard_path +
                             "' is not listed in " + where);
      }
      if (it->get<std::string>() != file) {
        return Status::Error("tensor '" + name + "' in shard '" + shard_path + "' is mapped by " +
                             where + " to another shard, '" + it->get<std::string>() + "'");
      }
    }
    ckpt.files_.push_back(std::move(shard).value());
  }
  return ckpt;
}

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> out;
  out.reserve(where_.size());
  for (const auto& kv : where_) out.push_back(kv.first);
  return out;
}

bool SafetensorsCheckpoint::contains(const std::string& name) const {
  return where_.count(name) != 0;
}

std::string SafetensorsCheckpoint::FileOf(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? std::string() : files_[it->second].path();
}

Result<const SafetensorsFile*> SafetensorsCheckpoint::FileFor(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) {
    return Status::Error("checkpoint '" + path_ + "': no tensor '" + name + "'");
  }
  return &files_[it->second];
}

Result<SafetensorsInfo> SafetensorsCheckpoint::Info(const std::string& name) const {
  XT_ASSIGN_OR_RETURN(const SafetensorsFile* f, FileFor(name));
  return f->Info(name);
}
Result<Tensor> SafetensorsCheckpoint::Get(const std::string& name) const {
  XT_ASSIGN_OR_RETURN(const SafetensorsFile* f, FileFor(name));
  return f->Get(name);
}
Result<Tensor> SafetensorsCheckpoint::GetF32(const std::string& name, const Shape& expected) const {
  XT_ASSIGN_OR_RETURN(const SafetensorsFile* f, FileFor(name));
  return f->GetF32(name, expected);
}
Result<std::vector<double>> SafetensorsCheckpoint::GetF64(const std::string& name,
                                                          const Shape& expected) const {
  XT_ASSIGN_OR_RETURN(const SafetensorsFile* f, FileFor(name));
  return f->GetF64(name, expected);
}

}  // namespace xt
