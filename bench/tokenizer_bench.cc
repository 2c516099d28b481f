// tokenizer_bench: single-thread encode speed of xt::Tokenizer on the same inputs as the HF
// `tokenizers` side of bench/tokenizer.sh.
//
//   tokenizer_bench --tokenizer tokenizer.json --text big.txt --docs docs.jsonl [--repeat 3]
//
// Workloads: "one_text" encodes the whole of --text in one call; "documents" encodes each
// {"text": ...} line of --docs in its own call. Each workload runs --repeat times after a warm-up
// and keeps the fastest run. Prints one JSON object per workload:
//   {"workload", "bytes", "tokens", "seconds", "mb_per_s", "tokens_per_s", "ids_hash"}
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "xtuner/data/tokenizer.h"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::fprintf(stderr, "tokenizer_bench: %s: cannot open\n", path.c_str());
    std::exit(1);
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// FNV-1a over the ids, to check that both sides produced the same tokens.
uint64_t HashIds(uint64_t h, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    h ^= static_cast<uint32_t>(id);
    h *= 1099511628211ull;
  }
  return h;
}

struct Run {
  size_t bytes = 0, tokens = 0;
  double seconds = 1e30;
  uint64_t hash = 0;
};

template <class F>
Run Best(int repeat, F&& once) {
  Run best;
  once();  // warm-up (caches, page faults)
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    Run run = once();
    run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (run.seconds < best.seconds) best = run;
  }
  return best;
}

void Print(const char* name, const Run& r) {
  std::printf(
      "{\"workload\": \"%s\", \"bytes\": %zu, \"tokens\": %zu, \"seconds\": %.6f, "
      "\"mb_per_s\": %.3f, \"tokens_per_s\": %.1f, \"ids_hash\": \"%016llx\"}\n",
      name, r.bytes, r.tokens, r.seconds, r.bytes / r.seconds / 1e6, r.tokens / r.seconds,
      static_cast<unsigned long long>(r.hash));
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer, text_path, docs_path;
  int repeat = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--tokenizer")) {
      tokenizer = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--text")) {
      text_path = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--docs")) {
      docs_path = argv[i + 1];
    } else if (!std::strcmp(argv[i], "--repeat")) {
      repeat = std::atoi(argv[i + 1]);
    }
  }
  if (tokenizer.empty() || (text_path.empty() && docs_path.empty())) {
    std::fprintf(stderr,
                 "usage: tokenizer_bench --tokenizer PATH [--text FILE] [--docs JSONL] "
                 "[--repeat N]\n");
    return 2;
  }
  auto tok = xt::Tokenizer::FromFile(tokenizer);
  if (!tok.ok()) {
    std::fprintf(stderr, "tokenizer_bench: %s\n", tok.status().message().c_str());
    return 1;
  }
  if (!text_path.empty()) {
    const std::string text = ReadFile(text_path);
    Print("one_text", Best(repeat, [&] {
            Run r;
            auto ids = tok->Encode(text);
            if (!ids.ok()) {
              std::fprintf(stderr, "tokenizer_bench: %s\n", ids.status().message().c_str());
              std::exit(1);
            }
            r.bytes = text.size();
            r.tokens = ids->size();
            r.hash = HashIds(1469598103934665603ull, *ids);
            return r;
          }));
  }
  if (!docs_path.empty()) {
    std::vector<std::string> docs;
    std::istringstream lines(ReadFile(docs_path));
    for (std::string line; std::getline(lines, line);) {
      if (!line.empty()) docs.push_back(nlohmann::json::parse(line).at("text"));
    }
    Print("documents", Best(repeat, [&] {
            Run r;
            r.hash = 1469598103934665603ull;
            for (const std::string& d : docs) {
              auto ids = tok->Encode(d);
              if (!ids.ok()) std::exit(1);
              r.bytes += d.size();
              r.tokens += ids->size();
              r.hash = HashIds(r.hash, *ids);
            }
            return r;
          }));
  }
  return 0;
}
