#include "hub/resolve_model.hpp"

#include <filesystem>

#include "core/check.hpp"
#include "core/path_status.hpp"
#include "hub/repo_cache.hpp"
#include "hub/snapshot_download.hpp"

namespace moxin::hub {
namespace fs = std::filesystem;
namespace {

std::string joined(const std::vector<std::string>& items) {
  std::string s;
  for (const std::string& item : items) s += (s.empty() ? "" : ", ") + item;
  return s;
}

// What the cache lacks for `ref`, in words; empty when the snapshot can be loaded as it is.
std::string cache_gap(const RepoRef& ref, const RepoCache& cache, ModelFiles files, fs::path& snapshot) {
  const auto commit = cache.commit_of(ref.revision);
  if (!commit) return cat("it is not in the Hugging Face cache (no ", (cache.dir() / "refs" / ref.revision).string(), ")");
  snapshot = cache.snapshot(*commit);
  const std::vector<std::string> missing = missing_model_files(snapshot, files);
  return missing.empty() ? "" : cat("its cached snapshot ", snapshot.string(), " lacks ", joined(missing));
}

}  // namespace

std::string resolve_model_dir(const std::string& path_or_id, const ProgressCallback& progress, ModelFiles files) {
  std::string why;
  if (fs::exists(path_status(path_or_id, why))) return path_or_id;
  MOXIN_CHECK(why.empty(), "[model] '", path_or_id, "' cannot be read: ", why);
  const auto ref = parse_repo_ref(path_or_id);
  MOXIN_CHECK(ref, "[model] '", path_or_id, "' does not exist, and it is not a Hugging Face model id either "
              "(ORG/NAME or ORG/NAME@REVISION): give a checkpoint directory or an id");
  const HubSettings settings = HubSettings::from_env();
  const RepoCache cache(settings.cache, ref->id);
  fs::path snapshot;
  const std::string gap = cache_gap(*ref, cache, files, snapshot);
  // A commit's files never change: a complete snapshot of one needs no network.
  if (gap.empty() && (settings.offline || is_commit_hash(ref->revision))) return snapshot.string();
  MOXIN_CHECK(!settings.offline, "[hub] ", ref->display(), ": ", gap,
              ", and HF_HUB_OFFLINE forbids downloading it (unset HF_HUB_OFFLINE, or give --model a checkpoint directory)");
  try {
    return download_snapshot(*ref, settings, progress, files).string();
  } catch (const ConnectionError& e) {
    if (gap.empty()) return snapshot.string();  // as huggingface_hub: the cached copy when the hub is unreachable
    fail("[hub] ", ref->display(), ": the download failed (", e.what(), "), and ", gap);
  }
}

}  // namespace moxin::hub
