#include "xtuner/train/export_files.h"

#include <filesystem>
#include <utility>
#include <vector>

namespace xt {

namespace fs = std::filesystem;

Status CopyExportFiles(const std::string& tokenizer_json, const std::string& base_model,
                       const std::string& out_dir) {
  std::vector<std::pair<fs::path, const char*>> files;  // source, name in out_dir
  if (!tokenizer_json.empty()) {
    const fs::path tok_dir = fs::path(tokenizer_json).parent_path();
    files.push_back({tokenizer_json, "tokenizer.json"});
    for (const char* f :
         {"tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"})
      files.push_back({tok_dir / f, f});
  }
  if (!base_model.empty())
    files.push_back({fs::path(base_model) / "generation_config.json", "generation_config.json"});
  for (const auto& [src, name] : files) {
    std::error_code ec;
    if (!fs::exists(src, ec)) continue;
    const fs::path dst = fs::path(out_dir) / name;
    if (fs::exists(dst, ec) && fs::equivalent(src, dst, ec)) continue;  // already there
    fs::copy_file(src, dst, fs::copy_options::overwrite_existing, ec);
    if (ec)
      return Status::Error(src.string() + ": cannot copy to " + dst.string() + ": " + ec.message());
  }
  return Status::OK();
}

}  // namespace xt
