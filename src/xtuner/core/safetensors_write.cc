// The writing half of safetensors.h: WriteSafetensors and WriteSafetensorsSharded.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>

#include "xtuner/core/file_util.h"
#include "xtuner/core/json.h"
#include "xtuner/core/safetensors.h"
#include "xtuner/core/utf8.h"

namespace xt {

static_assert(std::endian::native == std::endian::little,
              "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

bool IsUtf8(const std::string& s) { return FindInvalidUtf8(s) == std::string_view::npos; }

Status CheckTensorsToWrite(const std::string& path,
                           const std::vector<std::pair<std::string, Tensor>>& tensors) {
  std::set<std::string> seen;
  for (const auto& [name, t] : tensors) {
    if (name == "__metadata__") {
      return Status::Error("writing '" + path + "': '__metadata__' cannot be a tensor name");
    }
    if (!seen.insert(name).second) {
      return Status::Error("writing '" + path + "': tensor name '" + name + "' given twice");
    }
    if (!t.defined()) {
      return Status::Error("writing '" + path + "': tensor '" + name + "' has no data");
    }
    if (!IsUtf8(name)) {
      return Status::Error("writing '" + path + "': tensor name '" + name + "' is not UTF-8");
    }
  }
  return Status::OK();
}

}  // namespace

Status WriteSafetensors(const std::string& path,
                        const std::vector<std::pair<std::string, Tensor>>& tensors,
                        const std::map<std::string, std::string>& metadata) {
  XT_RETURN_IF_ERROR(CheckTensorsToWrite(path, tensors));
  // The reference writer's order: dtype descending in its enum (I64 > F32 > I32 > BF16 > F16 >
  // F8_E4M3), then name. Sizes descend with it, so every tensor starts aligned to its element
  // size.
  auto rank = [](DType t) {
    switch (t) {
      case DType::I64:
        return 0;
      case DType::F32:
        return 1;
      case DType::I32:
        return 2;
      case DType::BF16:
        return 3;
      case DType::F16:
        return 4;
      case DType::F8E4M3:
        return 5;
      case DType::U8:  // after F8_E4M3, as safetensors orders its dtypes
        return 6;
    }
    return 7;
  };
  std::vector<const std::pair<std::string, Tensor>*> order;
  for (const auto& kv : tensors) order.push_back(&kv);
  std::sort(order.begin(), order.end(), [&](const auto* a, const auto* b) {
    int ra = rank(a->second.dtype()), rb = rank(b->second.dtype());
    return ra != rb ? ra < rb : a->first < b->first;
  });

  // Also the reference's header: "__metadata__" first, then the tensors in data order, each as
  // {"dtype", "shape", "data_offsets"}; so our files are byte-identical to safetensors' own.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  header["__metadata__"] = meta;
  uint64_t offset = 0;
  std::vector<Chunk> chunks(2);
  for (const auto* kv : order) {
    const Tensor& t = kv->second;
    const uint64_t n = t.nbytes();
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = DTypeName(t.dtype());
    entry["shape"] = t.shape();
    entry["data_offsets"] = {offset, offset + n};
    header[kv->first] = std::move(entry);
    offset += n;
    if (n) chunks.push_back({t.data(), size_t(n)});
  }

  for (const auto& [k, v] : meta) {
    if (!IsUtf8(k) || !IsUtf8(v)) {
      return Status::Error("writing '" + path + "': metadata '" + k + "' is not UTF-8");
    }
  }
  std::string text = DumpJson(header);
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_size = text.size();
  chunks[0] = {&header_size, 8};
  chunks[1] = {text.data(), text.size()};
  return WriteFileAtomically(path, chunks);
}

Status WriteSafetensorsSharded(const std::string& dir,
                               const std::vector<std::pair<std::string, Tensor>>& tensors,
                               size_t max_shard_bytes) {
  SafetensorsShardWriter writer(dir, max_shard_bytes);
  for (const auto& [name, t] : tensors) XT_RETURN_IF_ERROR(writer.Add(name, t));
  return writer.Finish();
}

SafetensorsShardWriter::SafetensorsShardWriter(std::string dir, size_t max_shard_bytes)
    : dir_(std::move(dir)), max_shard_bytes_(max_shard_bytes) {}

SafetensorsShardWriter::~SafetensorsShardWriter() {
  std::error_code ec;
  if (!finished_)
    for (const std::string& f : partial_) fs::remove(fs::path(dir_) / f, ec);
}

Status SafetensorsShardWriter::Add(std::string name, Tensor t) {
  XT_RETURN_IF_ERROR(CheckTensorsToWrite(dir_, {{name, t}}));
  if (!seen_.insert(name).second)
    return Status::Error("writing '" + dir_ + "': tensor name '" + name + "' given twice");
  const size_t n = t.nbytes();
  if (!shard_.empty() && shard_bytes_ + n > max_shard_bytes_) XT_RETURN_IF_ERROR(Flush());
  shard_.emplace_back(std::move(name), std::move(t));
  shard_bytes_ += n;
  total_bytes_ += n;
  return Status::OK();
}

Status SafetensorsShardWriter::MakeDir() {
  if (created_) return Status::OK();
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec)
    return Status::Error("cannot create checkpoint directory '" + dir_ + "': " + ec.message());
  created_ = true;
  return Status::OK();
}

Status SafetensorsShardWriter::Flush() {
  XT_RETURN_IF_ERROR(MakeDir());
  char name[64];
  std::snprintf(name, sizeof(name), "model-%05zu.partial.safetensors", partial_.size() + 1);
  XT_RETURN_IF_ERROR(WriteSafetensors((fs::path(dir_) / name).string(), shard_));
  partial_.push_back(name);
  names_.emplace_back();
  for (const auto& kv : shard_) names_.back().push_back(kv.first);
  shard_.clear();
  shard_bytes_ = 0;
  return Status::OK();
}

Status SafetensorsShardWriter::Finish() {
  XT_CHECK(!finished_, "SafetensorsShardWriter: Finish called twice");
  const fs::path d(dir_);
  const std::string index_name = "model.safetensors.index.json";
  std::set<std::string> keep;
  if (partial_.empty()) {
    XT_RETURN_IF_ERROR(MakeDir());
    keep.insert("model.safetensors");
    XT_RETURN_IF_ERROR(WriteSafetensors((d / "model.safetensors").string(), shard_));
  } else {
    XT_RETURN_IF_ERROR(Flush());
    json weight_map = json::object();
    const size_t count = partial_.size();
    auto shard_name = [&](size_t i) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, count);
      return std::string(name);
    };
    // Where a shard is renamed over an earlier save's file of the same name, that save's index
    // goes first: a rename failing part-way then leaves no index over a mix of old and new
    // shards (loading fails, loudly). Where no name is taken, the earlier save stands whole
    // until the new index is written.
    std::error_code ec;
    for (size_t i = 0; i < count; ++i) {
      if (!fs::is_regular_file(d / shard_name(i), ec)) continue;
      if (!fs::remove(d / index_name, ec) && ec)
        return Status::Error("cannot remove the earlier index '" + (d / index_name).string() +
                             "': " + ec.message());
      break;
    }
    for (size_t i = 0; i < count; ++i) {
      const std::string name = shard_name(i);
      fs::rename(d / partial_[i], d / name, ec);
      if (ec)
        return Status::Error("cannot rename '" + (d / partial_[i]).string() + "' to '" +
                             (d / name).string() + "': " + ec.message());
      keep.insert(name);
      for (const std::string& t : names_[i]) weight_map[t] = name;
    }
    partial_.clear();  // (renamed: no longer ours to remove)
    json index = {{"metadata", {{"total_size", total_bytes_}}}, {"weight_map", weight_map}};
    std::string text = DumpJson(index, 2) + "\n";
    keep.insert(index_name);
    XT_RETURN_IF_ERROR(
        WriteFileAtomically((d / index_name).string(), {{text.data(), text.size()}}));
    SyncDirectory(dir_);
  }
  finished_ = true;

  // Remove what an earlier save left and this one does not use.
  auto is_ours = [&](const std::string& f) {
    if (f == "model.safetensors" || f == index_name) return true;
    // model-NNNNN.partial.safetensors: a shard a killed writer left
    if (f.size() == 31 && f.compare(0, 6, "model-") == 0 &&
        f.compare(11, 20, ".partial.safetensors") == 0)
      return std::all_of(f.begin() + 6, f.begin() + 11,
                         [](char c) { return c >= '0' && c <= '9'; });
    // model-NNNNN-of-NNNNN.safetensors
    if (f.size() != 32 || f.compare(0, 6, "model-") != 0 || f.compare(11, 4, "-of-") != 0 ||
        f.compare(20, 12, ".safetensors") != 0) {
      return false;
    }
    for (int i : {6, 7, 8, 9, 10, 15, 16, 17, 18, 19}) {
      if (f[i] < '0' || f[i] > '9') return false;
    }
    return true;
  };
  std::error_code ec;
  std::vector<fs::path> stale;
  for (fs::directory_iterator it(d, ec), end; !ec && it != end; it.increment(ec)) {
    std::string f = it->path().filename().string();
    if (is_ours(f) && !keep.count(f)) stale.push_back(it->path());
  }
  if (ec) return Status::Error("cannot list checkpoint directory '" + dir_ + "': " + ec.message());
  // The index first: once it is gone, a directory with a new model.safetensors is consistent.
  std::sort(stale.begin(), stale.end(), [&](const fs::path& a, const fs::path& b) {
    return (a.filename() == index_name) > (b.filename() == index_name);
  });
  for (const auto& p : stale) {
    if (!fs::remove(p, ec) && ec) {
      return Status::Error("cannot remove stale checkpoint file '" + p.string() +
                           "': " + ec.message());
    }
  }
  return Status::OK();
}

}  // namespace xt
