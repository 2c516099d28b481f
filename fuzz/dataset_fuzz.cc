// libFuzzer target for the JSONL dataset loader (LoadJsonl): the JSON of each line, the chat and
// text sample schemas, the chat templates' rendering and masking, and the tokenizer behind them.
//
// The first byte of an input chooses the setting, the rest is the file:
//   bits 0-1: tokenizer and template (chat_qwen3 + qwen3, chat_qwen3 + chatml,
//             chat_llama3 + llama3, chat_deepseek_v3 + deepseek-v3);
//   bits 2-3: the dataset kind (auto, chat, text, auto);
//   bit 4:    train.last_turn_only;
//   bit 5:    chat_gpt_oss + harmony instead of bits 0-1's pair.
// The file is loaded twice, skipping bad lines and stopping at the first. Either load gives
// samples or an error Status, never a crash, a sanitizer report or an abort, and:
//   - skipping: every line is a sample or a skipped line, counted as such in the report, and each
//     sample's ids lie in the vocabulary with labels that are -100 or the id itself;
//   - stopping: with nothing skipped, the same samples; otherwise an error that begins
//     "PATH:LINE:" at the first skipped line.
// See fuzz/README.md.
#include <omp.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "xtuner/data/chat_template.h"
#include "xtuner/data/dataset.h"
#include "xtuner/data/tokenizer.h"

namespace {

struct Setting {
  xt::Tokenizer tok;
  xt::ChatTemplate tmpl;
};

const std::vector<Setting>& Settings() {
  static const std::vector<Setting> settings = [] {
    const auto dir =
        std::filesystem::path(__FILE__).parent_path().parent_path() / "tests/data/tokenizers";
    std::vector<Setting> out;
    const std::pair<const char*, const char*> pairs[] = {{"chat_qwen3", "qwen3"},
                                                         {"chat_qwen3", "chatml"},
                                                         {"chat_llama3", "llama3"},
                                                         {"chat_deepseek_v3", "deepseek-v3"},
                                                         {"chat_gpt_oss", "harmony"}};
    for (auto [tok, tmpl] : pairs) {
      auto t = xt::Tokenizer::FromFile((dir / tok / "tokenizer.json").string());
      auto c = xt::ChatTemplate::ByName(tmpl);
      if (!t.ok() || !c.ok()) __builtin_trap();  // the fixtures must load
      out.push_back({std::move(t).value(), std::move(c).value()});
    }
    return out;
  }();
  return settings;
}

// The input's file: one per process, removed when the fuzzer exits (left behind by a crash).
struct InputFile {
  std::string path = (std::filesystem::temp_directory_path() /
                      ("xtuner_dataset_fuzz_" + std::to_string(::getpid()) + ".jsonl"))
                         .string();
  ~InputFile() { std::remove(path.c_str()); }
};

const std::string& FilePath() {
  static const InputFile file;
  return file.path;
}

void Check(bool ok) {
  if (!ok) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  omp_set_num_threads(1);  // the loader's blocks are parallel; one thread keeps runs fast
  Settings();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint8_t mode = data[0];
  const Setting& s = Settings()[(mode >> 5) & 1 ? 4 : mode & 3];
  const xt::DatasetKind kinds[] = {xt::DatasetKind::kAuto, xt::DatasetKind::kChat,
                                   xt::DatasetKind::kText, xt::DatasetKind::kAuto};
  const std::string& path = FilePath();
  {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    Check(f != nullptr);
    Check(std::fwrite(data + 1, 1, size - 1, f) == size - 1);
    std::fclose(f);
  }
  const xt::DatasetSpec spec{path, 1.0, kinds[(mode >> 2) & 3]};
  xt::LoadOptions options;
  options.train_last_turn_only = (mode >> 4) & 1;

  options.on_bad_sample = xt::OnBadSample::kSkip;
  xt::LoadReport report;
  auto skipping = xt::LoadJsonl(spec, s.tok, s.tmpl, options, &report);
  // The tokenizers have their templates' tokens and an EOS token: nothing but a line can fail.
  Check(skipping.ok());
  Check(int64_t(skipping->size()) == report.samples);
  Check(report.lines == report.samples + report.skipped);
  int64_t counted = 0, first_bad = -1;
  for (const auto& r : report.reasons) {
    counted += r.count;
    Check(r.count == 0 || (!r.first_lines.empty() && !r.first_message.empty()));
    if (r.count > 0 && (first_bad < 0 || r.first_lines[0] < first_bad))
      first_bad = r.first_lines[0];
  }
  Check(counted == report.skipped);
  for (const xt::Sample& sample : *skipping) {
    Check(!sample.input_ids.empty() && sample.labels.size() == sample.input_ids.size());
    for (size_t t = 0; t < sample.input_ids.size(); ++t) {
      const int32_t id = sample.input_ids[t];
      Check(id >= 0 && id < s.tok.vocab_size());
      Check(sample.labels[t] == -100 || sample.labels[t] == id);
    }
  }

  options.on_bad_sample = xt::OnBadSample::kError;
  auto stopping = xt::LoadJsonl(spec, s.tok, s.tmpl, options, nullptr);
  if (report.skipped == 0) {
    Check(stopping.ok() && stopping->size() == skipping->size());
    for (size_t i = 0; i < stopping->size(); ++i) {
      Check((*stopping)[i].input_ids == (*skipping)[i].input_ids);
      Check((*stopping)[i].labels == (*skipping)[i].labels);
    }
  } else {
    Check(!stopping.ok());
    const std::string where = path + ":" + std::to_string(first_bad) + ": ";
    Check(stopping.status().message().compare(0, where.size(), where) == 0);
  }
  return 0;
}
