// Where the Hugging Face cache and hub are, from the environment, the way huggingface_hub reads
// them, so both tools share one cache and one configuration.
#pragma once

#include <filesystem>
#include <string>

namespace moxin::hub {

struct HubSettings {
  std::filesystem::path cache;  // HF_HUB_CACHE, else HF_HOME/hub, else XDG_CACHE_HOME or ~/.cache + huggingface/hub
  std::string endpoint;         // HF_ENDPOINT (no trailing '/'), else https://huggingface.co
  std::string token;            // HF_TOKEN, else the file HF_TOKEN_PATH or HF_HOME/token; may be empty
  bool offline = false;         // HF_HUB_OFFLINE=1|true|yes|on

  static HubSettings from_env();
};

}  // namespace moxin::hub
