#include "hub/snapshot_download.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "core/check.hpp"
#include "core/progress_task.hpp"
#include "hub/download/blob_lock.hpp"
#include "hub/download/http_client.hpp"
#include "hub/repo_cache.hpp"

namespace moxin::hub {
namespace fs = std::filesystem;
namespace {

// Percent-encoding of a URL path part; '/' kept for file names, encoded for revisions
// ("refs/pr/1" is one path segment to the hub).
std::string url_encode(const std::string& s, bool keep_slash) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' || (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

// `W/"abc"` -> `abc`, as huggingface_hub names blobs.
std::string normalize_etag(std::string etag) {
  if (etag.rfind("W/", 0) == 0) etag.erase(0, 2);
  etag.erase(std::remove(etag.begin(), etag.end(), '"'), etag.end());
  return etag;
}

// "https://host:port/prefix" -> "https://host:port": where a redirect's absolute path applies.
std::string origin(const std::string& endpoint) {
  const size_t scheme = endpoint.find("://");
  const size_t path = endpoint.find('/', scheme == std::string::npos ? 0 : scheme + 3);
  return endpoint.substr(0, path);
}

bool is_hex(const std::string& s, size_t length) {
  return s.size() == length && std::all_of(s.begin(), s.end(), [](char c) { return std::isxdigit(static_cast<unsigned char>(c)); });
}

std::string header(const HttpResponse& r, const std::string& name) {
  const auto it = r.headers.find(name);
  return it == r.headers.end() ? "" : it->second;
}

// The digest the hub's ETag is: sha256 of an LFS file's bytes, else git's blob hash
// (sha1 of "blob <size>\0" + bytes). Empty when the ETag is neither (nothing to check).
std::string file_digest_for_etag(const fs::path& file, const std::string& etag) {
  const bool lfs = is_hex(etag, 64);
  if (!lfs && !is_hex(etag, 40)) return "";
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  MOXIN_CHECK(ctx && EVP_DigestInit_ex(ctx.get(), lfs ? EVP_sha256() : EVP_sha1(), nullptr) == 1,
              "[hub] OpenSSL could not start a digest");
  if (!lfs) {
    const std::string prefix = cat("blob ", fs::file_size(file), '\0');
    EVP_DigestUpdate(ctx.get(), prefix.data(), prefix.size());
  }
  std::ifstream in(file, std::ios::binary);
  std::vector<char> buffer(1 << 20);
  while (in.read(buffer.data(), static_cast<std::streamsize>(buffer.size())) || in.gcount() > 0)
    EVP_DigestUpdate(ctx.get(), buffer.data(), static_cast<size_t>(in.gcount()));
  std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
  unsigned int length = 0;
  EVP_DigestFinal_ex(ctx.get(), digest.data(), &length);
  std::string hex;
  for (unsigned int i = 0; i < length; ++i) hex += cat(std::hex, (digest[i] >> 4), (digest[i] & 15));
  return hex;
}

class SnapshotDownloader {
 public:
  SnapshotDownloader(const RepoRef& ref, const HubSettings& settings, const ProgressCallback& progress,
                     ModelFiles files)
      : ref_(ref), settings_(settings), progress_(progress), files_(files), cache_(settings.cache, ref.id),
        http_(make_curl_http_client()) {
    if (!settings.token.empty()) auth_.push_back("Authorization: Bearer " + settings.token);
  }

  fs::path run() {
    // Named, not structured bindings: clang (the fuzz build) cannot capture those in a lambda.
    const std::pair<std::string, std::set<std::string>> info = repo_files();
    const std::string& commit = info.first;
    const std::set<std::string>& listed = info.second;
    const auto need = [&](const std::string& file) {
      MOXIN_CHECK(listed.count(file), "[hub] ", ref_.display(), " (commit ", commit, ") has no ", file,
                  ", which the engine reads; it holds: ", list(listed));
      fetch(commit, file);
    };
    need("tokenizer.json");
    if (files_ == ModelFiles::TokenizerOnly) return done(commit);
    need("config.json");
    if (listed.count("quantize_config.json")) fetch(commit, "quantize_config.json");
    if (listed.count("model.safetensors.index.json")) {
      fetch(commit, "model.safetensors.index.json");
      for (const std::string& shard : index_shards(cache_.snapshot(commit) / "model.safetensors.index.json"))
        need(shard);
    } else {
      MOXIN_CHECK(listed.count("model.safetensors"), "[hub] ", ref_.display(), " (commit ", commit,
                  ") has neither model.safetensors nor model.safetensors.index.json; it holds: ", list(listed));
      fetch(commit, "model.safetensors");
    }
    return done(commit);
  }

 private:
  fs::path done(const std::string& commit) const {
    cache_.write_ref(ref_.revision, commit);
    return cache_.snapshot(commit);
  }

  static std::string list(const std::set<std::string>& files) {
    std::string s;
    for (const std::string& f : files) s += (s.empty() ? "" : ", ") + f;
    return s.empty() ? "no files" : s;
  }

  // Refusals named for what the user can do about them.
  void check(const HttpResponse& r, const std::string& what) const {
    if (r.status >= 200 && r.status < 400) return;
    const std::string hub_says = header(r, "x-error-message").empty() ? "" : " (the hub says: " + header(r, "x-error-message") + ")";
    const std::string where = cat("[hub] ", ref_.display(), ": ", what, " at ", settings_.endpoint, " answered HTTP ", r.status);
    if (r.status == 401 || r.status == 403)
      fail(where, hub_says, ": the repository is gated or private. ",
           settings_.token.empty() ? "Set HF_TOKEN to an access token (https://huggingface.co/settings/tokens) of an account that was granted access"
                                   : "The token in HF_TOKEN has no access: accept the model's conditions on its page, or use another token");
    if (r.status == 404)
      fail(where, hub_says, ": no such repository, revision or file (check the id and the revision; a private repository needs HF_TOKEN)");
    fail(where, hub_says);
  }

  std::pair<std::string, std::set<std::string>> repo_files() {
    const std::string url = cat(settings_.endpoint, "/api/models/", ref_.id, "/revision/", url_encode(ref_.revision, false));
    const HttpResponse r = http_->get(url, auth_);
    check(r, "the model information " + url);
    const nlohmann::json info = nlohmann::json::parse(r.body, nullptr, false);
    MOXIN_CHECK(info.is_object() && info.contains("sha") && info["sha"].is_string() && is_commit_hash(info["sha"].get<std::string>()),
                "[hub] ", ref_.display(), ": ", url, " did not answer a model description with its commit (\"sha\")");
    std::set<std::string> files;
    if (info.contains("siblings") && info["siblings"].is_array())
      for (const auto& sibling : info["siblings"])
        if (sibling.is_object() && sibling.contains("rfilename") && sibling["rfilename"].is_string())
          files.insert(sibling["rfilename"].get<std::string>());
    return {info["sha"].get<std::string>(), files};
  }

  // One file into blobs/<etag>, linked from the snapshot; nothing when it is already there.
  void fetch(const std::string& commit, const std::string& file) {
    if (in_cache(cache_.snapshot(commit) / file)) return;
    std::string url = cat(settings_.endpoint, "/", ref_.id, "/resolve/", commit, "/", url_encode(file, true));
    HttpResponse meta = http_->head(url, auth_);
    // A renamed repository answers with a redirect on the hub itself (a path): followed, as
    // huggingface_hub does; a redirect to another host (the CDN) carries the metadata itself.
    for (int hops = 0; meta.status >= 300 && meta.status < 400 && header(meta, "location").rfind("/", 0) == 0; ++hops) {
      MOXIN_CHECK(hops < 10, "[hub] ", ref_.display(), ": ", file, " redirects more than 10 times on the hub");
      url = origin(settings_.endpoint) + header(meta, "location");
      meta = http_->head(url, auth_);
    }
    check(meta, file);
    const std::string etag = normalize_etag(header(meta, "x-linked-etag").empty() ? header(meta, "etag") : header(meta, "x-linked-etag"));
    MOXIN_CHECK(!etag.empty() && etag.find('/') == std::string::npos && etag.find("..") == std::string::npos,
                "[hub] ", ref_.display(), ": ", url, " gave no usable ETag for ", file, " (got '", etag, "')");
    std::string size = header(meta, "x-linked-size");
    if (size.empty() && meta.status < 300) size = header(meta, "content-length");
    uint64_t bytes = 0;  // 0: not announced
    const auto [end, error] = std::from_chars(size.data(), size.data() + size.size(), bytes);
    MOXIN_CHECK(size.empty() || (error == std::errc() && end == size.data() + size.size()), "[hub] ",
                ref_.display(), ": ", url, " announced a size that is not a number ('", size, "')");
    if (!in_cache(cache_.blob(etag))) {
      const BlobLock lock(cache_.blob_lock(etag));
      if (!in_cache(cache_.blob(etag))) download_blob(url, file, etag, bytes);  // unless another process just did
    }
    cache_.link(commit, file, etag);
  }

  void download_blob(const std::string& url, const std::string& file, const std::string& etag, uint64_t size) {
    const fs::path blob = cache_.blob(etag);
    const fs::path partial = blob.string() + ".incomplete";  // huggingface_hub's name: either resumes the other's
    fs::create_directories(blob.parent_path());
    const uint64_t offset = fs::exists(partial) ? fs::file_size(partial) : 0;
    std::vector<std::string> headers = auth_;
    if (offset > 0) headers.push_back(cat("Range: bytes=", offset, "-"));
    std::ofstream out(partial, std::ios::binary | std::ios::app);
    MOXIN_CHECK(out.good(), "[hub] cannot write ", partial.string(), " (is the cache writable?)");
    ProgressTask task(&progress_, cat("download ", ref_.id, " ", file), size, ProgressUnit::Bytes, offset);
    uint64_t done = offset;
    bool first = true;
    HttpResponse r;
    try {
      r = http_->download(url, headers, [&](std::string_view chunk, long status) {
        if (first && offset > 0 && status != 206) {  // the server sent the whole file again
          out.close();
          out.open(partial, std::ios::binary | std::ios::trunc);
          done = 0;
        }
        first = false;
        out.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
        MOXIN_CHECK(out.good(), "[hub] writing ", partial.string(), " failed (disk full?)");
        done += chunk.size();
        task.set(done);
      });
    } catch (const ConnectionError& e) {
      out.close();
      throw ConnectionError(cat(e.what(), " while downloading ", file, ": ", done, " of ", size, " bytes are kept in ",
                                partial.string(), "; run again to resume"));
    }
    out.close();
    if (r.status == 416 && offset == size) r.status = 206;  // it was complete already
    check(r, file);
    task.finish();
    const uint64_t got = fs::file_size(partial);
    const std::string digest = file_digest_for_etag(partial, etag);
    if ((size && got != size) || (!digest.empty() && digest != etag)) {
      fs::remove(partial);
      fail("[hub] ", ref_.display(), ": ", file, " from ", url, " does not match what the hub announced (",
           size && got != size ? cat(got, " bytes instead of ", size) : cat("digest ", digest, " instead of the ETag ", etag),
           "); the partial file was removed, run again");
    }
    fs::rename(partial, blob);
  }

  const RepoRef& ref_;
  const HubSettings& settings_;
  const ProgressCallback& progress_;
  ModelFiles files_;
  RepoCache cache_;
  std::unique_ptr<HttpClient> http_;
  std::vector<std::string> auth_;
};

}  // namespace

fs::path download_snapshot(const RepoRef& ref, const HubSettings& settings, const ProgressCallback& progress,
                           ModelFiles files) {
  return SnapshotDownloader(ref, settings, progress, files).run();
}

}  // namespace moxin::hub
