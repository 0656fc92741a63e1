#include "hub/repo_cache.hpp"

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/check.hpp"
#include "core/path_status.hpp"
#include "hub/repo_ref.hpp"

namespace moxin::hub {
namespace fs = std::filesystem;

RepoCache::RepoCache(const fs::path& cache_root, const std::string& repo_id) {
  std::string folder = "models--" + repo_id;
  folder.replace(folder.find('/'), 1, "--");
  dir_ = cache_root / folder;
}

std::optional<std::string> RepoCache::commit_of(const std::string& revision) const {
  if (is_commit_hash(revision)) return revision;
  std::ifstream in(dir_ / "refs" / revision);
  std::string commit;
  if (!std::getline(in, commit) || !is_commit_hash(commit)) return std::nullopt;
  return commit;
}

void RepoCache::write_ref(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return;
  const fs::path ref = dir_ / "refs" / revision;
  fs::create_directories(ref.parent_path());
  std::ofstream out(ref, std::ios::trunc);
  out << commit;  // no newline, as huggingface_hub writes it
  MOXIN_CHECK(out.good(), "[hub] cannot write ", ref.string());
}

void RepoCache::link(const std::string& commit, const std::string& file, const std::string& etag) const {
  const fs::path pointer = snapshot(commit) / file;
  fs::create_directories(pointer.parent_path());
  std::error_code ignored;
  fs::remove(pointer, ignored);
  fs::create_symlink(fs::relative(blob(etag), pointer.parent_path()), pointer);
}

std::vector<std::string> index_shards(const fs::path& index_file) {
  std::ifstream in(index_file);
  MOXIN_CHECK(in.good(), "[hub] cannot read ", index_file.string());
  const nlohmann::json index = nlohmann::json::parse(in, nullptr, false);
  MOXIN_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
              "[hub] ", index_file.string(), " is not a safetensors index (no \"weight_map\" object)");
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (const auto& [tensor, shard] : index["weight_map"].items()) {
    MOXIN_CHECK(shard.is_string(), "[hub] ", index_file.string(), ": the shard of '", tensor,
                "' is not a file name");
    const std::string name = shard.get<std::string>();
    // The names become paths in the cache: nothing outside the snapshot.
    MOXIN_CHECK(!name.empty() && name.find("..") == std::string::npos && name.front() != '/',
                "[hub] ", index_file.string(), ": shard name '", name, "' is not a file of the repository");
    if (seen.insert(name).second) shards.push_back(name);
  }
  return shards;
}

bool in_cache(const fs::path& file) {
  std::string why;
  const bool present = fs::exists(path_status(file, why));
  MOXIN_CHECK(why.empty(), "[hub] ", file.string(), " cannot be read: ", why);
  return present;
}

std::vector<std::string> missing_model_files(const fs::path& snapshot, ModelFiles files) {
  std::vector<std::string> missing;
  if (!in_cache(snapshot / "tokenizer.json")) missing.push_back("tokenizer.json");
  if (files == ModelFiles::TokenizerOnly) return missing;
  if (!in_cache(snapshot / "config.json")) missing.push_back("config.json");
  if (in_cache(snapshot / "model.safetensors.index.json")) {
    for (const std::string& shard : index_shards(snapshot / "model.safetensors.index.json"))
      if (!in_cache(snapshot / shard)) missing.push_back(shard);
  } else if (!in_cache(snapshot / "model.safetensors")) {
    missing.push_back("model.safetensors (or model.safetensors.index.json and its shards)");
  }
  return missing;
}

}  // namespace moxin::hub
