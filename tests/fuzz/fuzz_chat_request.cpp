// The chat completion request body as the server reads it: strict JSON, the field-by-field
// mapping, then the prompt the messages make, tokenized with the seed tokenizer. Any input is
// either mapped or refused with ApiError / moxin::Error.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "io/json_strict.hpp"
#include "moxin/error.hpp"
#include "runtime/prompt.hpp"
#include "server/api_error.hpp"
#include "server/chat_request.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  try {
    const nlohmann::json body = parse_json_strict(fuzz::as_text(data, size), "the request body", 32);
    const server::ChatRequest request = server::parse_chat_request(body);
    if (request.turns.empty() || !request.turns.back().assistant.empty()) __builtin_trap();
    (void)tokenize_prompt(fuzz::seed_tokenizer(), request.turns);
  } catch (const server::ApiError&) {
  } catch (const Error&) {
  }
  return 0;
}
