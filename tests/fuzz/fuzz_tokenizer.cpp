// tokenizer.json parsing, then encode / decode / streaming decode: input = tokenizer.json NUL
// text. An unparsable tokenizer.json falls back to the seed tokenizer, so the text is always
// encoded. Checked beyond "no crash": streaming decode of any ids equals decode of them all.
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "moxin/error.hpp"
#include "text/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  const auto [json, text] = fuzz::split_at_nul(fuzz::as_text(data, size));
  std::optional<Tokenizer> parsed;
  try {
    parsed.emplace(Tokenizer::from_json(std::string(json), "fuzz.json"));
  } catch (const Error&) {
  }
  const Tokenizer& tokenizer = parsed ? *parsed : fuzz::seed_tokenizer();
  try {
    const std::vector<int32_t> ids = tokenizer.encode(text, true, size % 2 == 0);
    (void)tokenizer.decode(ids, false);
  } catch (const Error&) {  // invalid UTF-8 input, or a tokenizer that cannot spell it
  }
  // The text's bytes read as ids (little-endian 16-bit), most of them unknown to the vocabulary.
  std::vector<int32_t> ids(text.size() / 2);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<uint8_t>(text[2 * i]) | static_cast<uint8_t>(text[2 * i + 1]) << 8;
  for (const bool skip : {true, false}) {
    std::string whole;
    try {
      whole = tokenizer.decode(ids, skip);
    } catch (const Error&) {
      continue;
    }
    StreamDecoder stream(tokenizer, skip);
    std::string streamed;
    for (const int32_t id : ids) streamed += stream.push(id);
    streamed += stream.flush();
    if (streamed != whole) __builtin_trap();
  }
  return 0;
}
