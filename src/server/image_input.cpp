#include "server/image_input.hpp"

#include <cctype>
#include <string_view>

#include "core/check.hpp"
#include "image/image.hpp"
#include "moxin/moxin.hpp"
#include "server/api_error.hpp"
#include "server/base64.hpp"

namespace moxin::server {
namespace {

constexpr const char* kParam = "messages";

bool starts_with_ci(std::string_view s, std::string_view prefix) {
  if (s.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(s[i])) != prefix[i]) return false;
  return true;
}

// "ftp" of "ftp://host/x.png" (RFC 3986: a letter, then letters, digits, '+', '-', '.');
// empty when the URL does not start with "scheme://", as a local path does not.
std::string url_scheme(std::string_view url) {
  const size_t colon = url.find("://");
  if (colon == std::string_view::npos || colon == 0 || !std::isalpha(static_cast<unsigned char>(url[0]))) return "";
  for (const char c : url.substr(0, colon))
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '+' && c != '-' && c != '.') return "";
  return std::string(url.substr(0, colon));
}

std::vector<uint8_t> data_url_bytes(std::string_view url) {
  const size_t comma = url.find(',');
  if (comma == std::string_view::npos) throw bad_request("the image data URL has no ',' before its data", kParam);
  const std::string_view header = url.substr(5, comma - 5);  // after "data:"
  if (!starts_with_ci(header, "image/"))
    throw bad_request(cat("the data URL's media type must be image/... (got '", header.substr(0, 40),
                          "'): only images can be attached"), kParam);
  if (header.size() < 7 || !std::string_view(header).ends_with(";base64"))
    throw bad_request("the image data URL must be base64-encoded (data:image/png;base64,...)", kParam);
  auto bytes = decode_base64(url.substr(comma + 1));
  if (!bytes) throw bad_request("the image data URL's payload is not valid base64", kParam);
  if (bytes->empty()) throw bad_request("the image data URL is empty", kParam);
  return std::move(*bytes);
}

std::vector<uint8_t> local_file_bytes(std::string_view url, const ImagePolicy& policy) {
  if (!policy.allow_local_files)
    throw bad_request("local image paths are refused (start the server with --allow-local-images to allow them); "
                      "send the image as a data:image/...;base64 URL",
                      kParam);
  const std::string path(starts_with_ci(url, "file://") ? url.substr(7) : url);
  try {
    return read_file(path);
  } catch (const Error& e) {
    throw bad_request(e.what(), kParam);
  }
}

}  // namespace

RequestImage load_request_image(const std::string& url, const ImagePolicy& policy) {
  std::vector<uint8_t> bytes;
  if (starts_with_ci(url, "data:")) {
    bytes = data_url_bytes(url);
  } else if (starts_with_ci(url, "http://") || starts_with_ci(url, "https://")) {
    throw bad_request("remote image URLs are not supported: this server fetches nothing "
                      "(--allow-remote-images is not implemented); send the image as a data:image/...;base64 URL",
                      kParam);
  } else if (const std::string scheme = url_scheme(url); !scheme.empty() && !starts_with_ci(url, "file://")) {
    throw bad_request(cat("image URLs with the scheme '", scheme.substr(0, 20),
                          "' are not supported: send the image as a data:image/...;base64 URL"),
                      kParam);
  } else {
    bytes = local_file_bytes(url, policy);
  }
  try {
    return prepare_request_image(bytes, policy.max_pixels, policy.image_size, "the request's image");
  } catch (const Error& e) {
    throw bad_request(e.what(), kParam);
  }
}

}  // namespace moxin::server
