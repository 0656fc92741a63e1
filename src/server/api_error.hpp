// An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}} with an
// HTTP status. Handlers throw it; the one wrapper in server.cpp turns it into the response.
#pragma once

#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace moxin::server {

struct ApiError : std::runtime_error {
  ApiError(int status, std::string message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {})
      : std::runtime_error(message), status(status), param(std::move(param)), type(std::move(type)),
        code(std::move(code)) {}

  int status;
  std::string param;  // the request field at fault, if any
  std::string type;
  std::string code;

  nlohmann::json to_json() const {
    const auto or_null = [](const std::string& s) { return s.empty() ? nlohmann::json() : nlohmann::json(s); };
    return {{"error", {{"message", what()}, {"type", type}, {"param", or_null(param)}, {"code", or_null(code)}}}};
  }
};

inline ApiError bad_request(std::string message, std::string param = {}) {
  return ApiError(400, std::move(message), std::move(param));
}

}  // namespace moxin::server
