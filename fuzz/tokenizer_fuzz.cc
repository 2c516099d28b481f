// libFuzzer target for the tokenizer. The first byte of an input chooses what the rest is:
//   even: a tokenizer.json. Loading it must give a tokenizer or an error Status; a tokenizer
//         must then encode a few texts into ids inside its vocabulary and decode them.
//   odd:  text for one of the fixture tokenizers of tests/data/tokenizers (chosen by the second
//         byte). Encode must fail exactly when the text is not UTF-8; ids must be inside the
//         vocabulary; for the byte-level NFC fixtures decode(encode(text)) must equal NFC(text);
//         the input bytes read as ids must decode or fail cleanly.
// Never a crash, a sanitizer report or an abort. See fuzz/README.md.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include "xtuner/data/tokenizer.h"
#include "xtuner/data/tokenizer_normalizer.h"
#include "xtuner/data/tokenizer_unicode.h"

namespace {

struct Fixture {
  xt::Tokenizer tok;
  bool round_trips;  // byte-level with NFC: decode(encode(x)) == NFC(x)
};

const std::vector<Fixture>& Fixtures() {
  static const std::vector<Fixture> fixtures = [] {
    const auto dir =
        std::filesystem::path(__FILE__).parent_path().parent_path() / "tests/data/tokenizers";
    std::vector<Fixture> out;
    for (const char* name :
         {"bpe_qwen_style", "bpe_llama3_style", "bpe_metaspace_fallback", "bpe_llama2_legacy",
          "bpe_bytelevel_gpt2", "bpe_split_behaviors", "bpe_metaspace_digits",
          "bpe_subword_affixes", "bpe_whitespace_punct"}) {
      auto t = xt::Tokenizer::FromFile((dir / name).string());
      if (!t.ok()) __builtin_trap();  // the fixtures must load
      const std::string n = name;
      out.push_back({std::move(t).value(), n == "bpe_qwen_style" || n == "bpe_llama3_style"});
    }
    return out;
  }();
  return fixtures;
}

void CheckIds(const xt::Tokenizer& tok, const std::vector<int32_t>& ids) {
  for (int32_t id : ids) {
    if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
  }
  if (!tok.Decode(ids).ok() || !tok.Decode(ids, true).ok()) __builtin_trap();
}

void FuzzLoader(std::string_view json) {
  auto tok = xt::Tokenizer::FromJson(json, "fuzz.json");
  if (!tok.ok()) {
    if (tok.status().message().empty()) __builtin_trap();
    return;
  }
  for (std::string_view text : {"", "Hello, world!", "  a\tb\r\n12345 <s> </s> <|im_end|>",
                                "caf\xC3\xA9 \xE4\xBD\xA0\xE5\xA5\xBD \xF0\x9F\xA4\x97"}) {
    auto ids = tok->Encode(text, text.size() % 2 == 0);
    if (ids.ok()) CheckIds(*tok, *ids);
  }
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < tok->vocab_size() && id < 300; ++id) ids.push_back(id);
  (void)tok->Decode(ids);
}

void FuzzEncode(uint8_t which, std::string_view text) {
  const auto& fixtures = Fixtures();
  const Fixture& f = fixtures[which % fixtures.size()];
  auto ids = f.tok.Encode(text, which & 0x80);
  if (ids.ok() != xt::tok::IsValidUtf8(text)) __builtin_trap();
  if (ids.ok()) {
    CheckIds(f.tok, *ids);
    // (Not across special tokens: the normalizer works between them, NFC over the whole text
    // may compose a special token's '>' with a following U+0338.)
    if (f.round_trips && !(which & 0x80) && text.find("<|") == std::string_view::npos) {
      std::string nfc;
      xt::tok::UnicodeNormalize(text, 1 << 3 /* UTF8PROC_COMPOSE */, &nfc);
      if (f.tok.Decode(*ids).value() != nfc) __builtin_trap();
    }
  }
  // The raw bytes as ids (pairs of bytes), inside and outside the vocabulary.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 1 < text.size(); i += 2) {
    raw.push_back(static_cast<int32_t>(static_cast<uint8_t>(text[i]) << 8 |
                                       static_cast<uint8_t>(text[i + 1])) -
                  16);
  }
  auto s = f.tok.Decode(raw, which & 0x40);
  bool in_vocab = true;
  for (int32_t id : raw) in_vocab = in_vocab && !f.tok.IdToToken(id).empty();
  if (in_vocab && !s.ok()) __builtin_trap();
  if (s.ok() && !xt::tok::IsValidUtf8(*s)) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    FuzzLoader(rest);
  } else if (size >= 2) {
    FuzzEncode(data[1], rest.substr(1));
  }
  return 0;
}
