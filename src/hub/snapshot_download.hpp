// Downloading a model's files from the Hugging Face hub into the cache, as huggingface_hub
// does (same requests, same layout), so either tool uses what the other fetched.
#pragma once

#include <filesystem>

#include "hub/hub_settings.hpp"
#include "hub/repo_cache.hpp"
#include "hub/repo_ref.hpp"
#include "moxin/error.hpp"
#include "moxin/progress.hpp"

namespace moxin::hub {

// No HTTP answer at all (refused, timed out, cut mid-body): the resolver may then fall back to
// a cached snapshot, as huggingface_hub does. The message names the URL and the cause.
class ConnectionError : public Error {
 public:
  using Error::Error;
};

// Asks the hub which commit `ref` is and which files it has, fetches those of `files` (all:
// config.json, tokenizer.json, quantize_config.json, the safetensors and their index) that the
// cache lacks, resuming partial ones, checks each against the hub's ETag (sha256 for LFS files,
// the git blob hash otherwise), records refs/<revision>, and returns the snapshot folder.
// Throws moxin::Error naming the id, the revision and the cause (ConnectionError when the hub
// cannot be reached); a build without libcurl always throws, saying so.
std::filesystem::path download_snapshot(const RepoRef& ref, const HubSettings& settings,
                                        const ProgressCallback& progress, ModelFiles files);

}  // namespace moxin::hub
