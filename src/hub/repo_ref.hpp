// A Hugging Face model id as users write it: "org/name" or "org/name@revision".
#pragma once

#include <optional>
#include <string>

namespace moxin::hub {

struct RepoRef {
  std::string id;        // "org/name"
  std::string revision;  // a branch, tag or commit hash; "main" when not given

  std::string display() const { return id + "@" + revision; }
};

// The id with its revision, or nullopt when `text` is not shaped like one (the caller then
// treats it as a path). Follows the hub's rules (huggingface_hub's validate_repo_id): ASCII
// letters, digits, '-', '_', '.', starting and ending with a letter, digit or '_'; no "--" or
// ".."; at most 96 characters per part; not ending in ".git".
std::optional<RepoRef> parse_repo_ref(const std::string& text);

// A full 40-hex-digit commit hash (which the cache keys snapshots by).
bool is_commit_hash(const std::string& revision);

}  // namespace moxin::hub
