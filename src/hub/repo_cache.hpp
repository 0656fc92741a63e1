// One model's folder in the Hugging Face cache, laid out exactly as huggingface_hub writes it:
//   models--org--name/refs/<revision>            the commit hash a branch or tag pointed at
//   models--org--name/snapshots/<commit>/<file>  relative symlink to ../../blobs/<etag>
//   models--org--name/blobs/<etag>               the file's bytes (etag: sha256 for LFS files)
// so files either tool downloaded are used by the other as they are.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace moxin::hub {

class RepoCache {
 public:
  RepoCache(const std::filesystem::path& cache_root, const std::string& repo_id);

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path snapshot(const std::string& commit) const { return dir_ / "snapshots" / commit; }
  std::filesystem::path blob(const std::string& etag) const { return dir_ / "blobs" / etag; }
  // huggingface_hub's lock for downloading a blob: <cache>/.locks/models--org--name/<etag>.lock
  std::filesystem::path blob_lock(const std::string& etag) const {
    return dir_.parent_path() / ".locks" / dir_.filename() / (etag + ".lock");
  }

  // The commit a revision resolves to without the network: a commit hash itself, else what
  // refs/<revision> holds; nullopt when the revision was never downloaded.
  std::optional<std::string> commit_of(const std::string& revision) const;
  void write_ref(const std::string& revision, const std::string& commit) const;
  // snapshots/<commit>/<file> -> blobs/<etag>, a relative symlink (replacing an older one).
  void link(const std::string& commit, const std::string& file, const std::string& etag) const;

 private:
  std::filesystem::path dir_;
};

// What a caller of the cache reads: the whole checkpoint (config.json, tokenizer.json, and
// model.safetensors or the index with every shard it names), or tokenizer.json alone.
enum class ModelFiles { Checkpoint, TokenizerOnly };

// Those of `files` absent from a snapshot folder (empty: it can be used).
std::vector<std::string> missing_model_files(const std::filesystem::path& snapshot, ModelFiles files);

// Whether a file of the cache is there; a name the OS cannot look up (one past its length limit,
// from a repository's index or a server's ETag) is refused by name (moxin::Error).
bool in_cache(const std::filesystem::path& file);

// The shard files a model.safetensors.index.json names, each once, in order.
std::vector<std::string> index_shards(const std::filesystem::path& index_file);

}  // namespace moxin::hub
