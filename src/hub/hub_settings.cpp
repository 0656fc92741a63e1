#include "hub/hub_settings.hpp"

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>

namespace moxin::hub {
namespace fs = std::filesystem;
namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value ? value : "";
}

std::string trim(std::string s) {
  const auto blank = [](unsigned char c) { return std::isspace(c) != 0; };
  s.erase(s.begin(), std::find_if_not(s.begin(), s.end(), blank));
  s.erase(std::find_if_not(s.rbegin(), s.rend(), blank).base(), s.end());
  return s;
}

bool truthy(std::string value) {
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return value == "1" || value == "true" || value == "yes" || value == "on";
}

fs::path hf_home() {
  if (!env("HF_HOME").empty()) return env("HF_HOME");
  const std::string xdg = env("XDG_CACHE_HOME");
  return fs::path(xdg.empty() ? env("HOME") + "/.cache" : xdg) / "huggingface";
}

std::string stored_token() {
  const fs::path path = env("HF_TOKEN_PATH").empty() ? hf_home() / "token" : fs::path(env("HF_TOKEN_PATH"));
  std::ifstream in(path);
  std::string token;
  std::getline(in, token);
  return trim(token);
}

}  // namespace

HubSettings HubSettings::from_env() {
  HubSettings s;
  s.cache = env("HF_HUB_CACHE").empty() ? hf_home() / "hub" : fs::path(env("HF_HUB_CACHE"));
  s.endpoint = env("HF_ENDPOINT").empty() ? "https://huggingface.co" : env("HF_ENDPOINT");
  while (!s.endpoint.empty() && s.endpoint.back() == '/') s.endpoint.pop_back();
  s.token = trim(env("HF_TOKEN"));
  if (s.token.empty()) s.token = stored_token();
  s.offline = truthy(env("HF_HUB_OFFLINE"));
  return s;
}

}  // namespace moxin::hub
