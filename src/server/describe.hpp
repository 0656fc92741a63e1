// POST /v1/describe, the route of the seed crate's server (OminiX moxin-vlm-mlx), for its users:
//   {"image": <base64 of an image file>, "prompt": string (default "Describe this image."),
//    "max_tokens": integer >= 1 (default 256), "temperature": 0..2 (default 0, greedy)}
//   -> {"description": text, "tokens": generated tokens, "prefill_ms", "tokens_per_second"}
// The request becomes a one-turn chat (the image as a data URL), so every check of the chat
// route applies; errors come in the server's usual shape (api_error.hpp), naming the field.
#pragma once

#include <chrono>
#include <memory>
#include <nlohmann/json.hpp>

#include "runtime/request_stream.hpp"
#include "server/chat_request.hpp"

namespace moxin::server {

// Throws ApiError (400) naming the field at fault.
ChatRequest parse_describe_request(const nlohmann::json& body);

// Waits for the whole answer. prefill_ms is measured here, from `submitted` to the first token
// (queueing, the vision encoders and the prefill); tokens_per_second over the tokens after it.
nlohmann::json describe_response(RequestStream& stream, std::chrono::steady_clock::time_point submitted);

}  // namespace moxin::server
