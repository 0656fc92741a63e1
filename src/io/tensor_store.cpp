// TensorStore: the tensors of a checkpoint directory, single-file or sharded with an index.
#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "io/json_strict.hpp"
#include "io/mapped_file.hpp"
#include "core/path_status.hpp"
#include "io/safetensors.hpp"

namespace moxin {
namespace fs = std::filesystem;
namespace {

constexpr const char* kSingleFile = "model.safetensors";
constexpr const char* kIndexFile = "model.safetensors.index.json";

// "a, b, c, ... (12 entries)" of the directory, for the message that says nothing was found.
std::string list_directory(const fs::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    names.push_back(entry.path().filename());
  if (names.empty()) return "nothing";
  std::sort(names.begin(), names.end());
  constexpr size_t kShown = 20;
  std::string out;
  for (size_t i = 0; i < std::min(names.size(), kShown); ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > kShown) out += cat(", ... (", names.size(), " entries)");
  return out;
}

// The index's weight_map as tensor name -> shard file name.
std::map<std::string, std::string> read_weight_map(const std::string& index_path) {
  const nlohmann::json index = read_json_file(index_path, "[safetensors]");
  const std::string where = cat("[safetensors] ", index_path);
  MOXIN_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
              where,
              ": expected an object with a \"weight_map\" object (tensor name -> shard file)");
  std::map<std::string, std::string> out;
  for (const auto& [name, shard] : index["weight_map"].items()) {
    MOXIN_CHECK(shard.is_string(), where, ": weight_map maps tensor '", name, "' to ",
                describe_json(shard), ", expected a shard file name");
    const fs::path shard_path = shard.get<std::string>();
    const bool escapes = std::any_of(shard_path.begin(), shard_path.end(),
                                     [](const fs::path& part) { return part == ".."; });
    MOXIN_CHECK(!shard_path.empty() && shard_path.is_relative() && !escapes, where,
                ": weight_map maps tensor '", name, "' to '", shard_path.string(),
                "', expected a file name inside the model directory");
    out[name] = shard_path.string();
  }
  MOXIN_CHECK(!out.empty(), where, ": weight_map lists no tensors");
  return out;
}

}  // namespace

TensorStore TensorStore::open_dir(const std::string& dir, const SafetensorsLimits& limits) {
  TensorStore store;
  const fs::path root(dir);
  const fs::path index_path = root / kIndexFile;
  std::map<std::string, std::string> weight_map;  // empty for a single file

  std::string why;
  if (fs::exists(path_status(index_path, why))) {
    weight_map = read_weight_map(index_path);
    std::map<std::string, std::string> first_tensor_of;  // shard -> one tensor it should hold
    for (const auto& [name, shard] : weight_map) first_tensor_of.emplace(shard, name);
    for (const auto& [shard, example] : first_tensor_of) {
      const fs::path shard_path = root / shard;
      const bool regular = fs::is_regular_file(path_status(shard_path, why));
      MOXIN_CHECK(regular, "[safetensors] ", index_path.string(), ": shard '", shard, "' (listed for tensor '",
                  example, "') ",
                  why.empty() ? cat("does not exist in ", dir, " (incomplete download?)")
                              : cat("cannot be opened: ", why));
      store.files_.push_back(SafetensorsFile::open(shard_path.string(), limits));
    }
  } else if (fs::exists(path_status(root / kSingleFile, why))) {
    store.files_.push_back(SafetensorsFile::open((root / kSingleFile).string(), limits));
  } else {
    const bool directory = fs::is_directory(path_status(root, why));
    MOXIN_CHECK(directory, "[safetensors] model directory '", dir, "' ",
                why.empty() ? "does not exist" : cat("cannot be read: ", why));
    fail("[safetensors] ", dir, " has no ", kSingleFile, " and no ", kIndexFile,
         " (it contains: ", list_directory(root),
         "); expected the Hugging Face layout: config.json plus model.safetensors, or "
         "model-0000N-of-0000M.safetensors shards with ",
         kIndexFile);
  }

  for (const auto& file : store.files_)
    for (const TensorInfo& t : file->tensors()) {
      const auto [it, inserted] = store.by_name_.emplace(t.name, &t);
      MOXIN_CHECK(inserted, "[safetensors] tensor '", t.name,
                  "' is in two shards: ", it->second->file, " and ", t.file);
    }
  if (weight_map.empty()) return store;

  // The index and the shards must agree exactly, or a loader trusting either one could
  // silently read the wrong bytes.
  for (const auto& [name, shard] : weight_map) {
    const TensorInfo* t = store.find(name);
    MOXIN_CHECK(t != nullptr, "[safetensors] ", index_path.string(), ": lists tensor '", name,
                "' in '", shard, "', but that shard does not contain it");
    MOXIN_CHECK(t->file == (root / shard).string(), "[safetensors] ", index_path.string(),
                ": lists tensor '", name, "' in '", shard, "', but it is in ", t->file);
  }
  for (const auto& [name, t] : store.by_name_)
    MOXIN_CHECK(weight_map.count(name), "[safetensors] ", t->file, ": tensor '", name,
                "' is not listed in ", index_path.string());
  return store;
}

const TensorInfo* TensorStore::find(const std::string& name) const {
  const auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

std::vector<std::string> TensorStore::names() const {
  std::vector<std::string> out;
  for (const auto& entry : by_name_) out.push_back(entry.first);
  return out;
}

void TensorStore::release_resident_pages() const {
  for (const auto& f : files_) f->mapping().release_resident_pages();
}

void TensorStore::release_resident_pages(const TensorInfo& t) const {
  for (const auto& f : files_)
    if (f->mapping().release_resident_pages(t.data, t.nbytes)) return;
}

size_t TensorStore::total_bytes() const {
  size_t total = 0;
  for (const auto& entry : by_name_) total += entry.second->nbytes;
  return total;
}

const TensorInfo* TensorStore::reshaped(const TensorInfo& t, std::vector<int64_t> shape) {
  auto view = std::make_shared<TensorInfo>(t);
  view->shape = std::move(shape);
  MOXIN_CHECK(view->numel() == t.numel(), "[safetensors] cannot view tensor '", t.name, "' ",
              t.shape_str(), " as ", view->shape_str());
  views_.push_back(view);
  return view.get();
}

const TensorInfo* TensorStore::concatenated(const std::vector<const TensorInfo*>& parts,
                                            const std::string& name) {
  MOXIN_CHECK(!parts.empty(), "[safetensors] nothing to concatenate into '", name, "'");
  const TensorInfo& first = *parts.front();
  auto bytes = std::make_shared<std::vector<uint8_t>>();
  auto out = std::make_shared<TensorInfo>(first);
  out->name = name;
  out->shape[0] = 0;
  for (const TensorInfo* t : parts) {
    const bool same_rows = t->shape.size() == first.shape.size() &&
                           std::equal(t->shape.begin() + 1, t->shape.end(), first.shape.begin() + 1);
    MOXIN_CHECK(t->dtype == first.dtype && same_rows, "[safetensors] ", t->file, ": tensor '", t->name,
                "' (", dtype_name(t->dtype), " ", t->shape_str(), ") cannot be stacked with '", first.name,
                "' (", dtype_name(first.dtype), " ", first.shape_str(), ") into '", name,
                "': the dtypes and trailing dimensions must match");
    bytes->insert(bytes->end(), t->data, t->data + t->nbytes);
    out->shape[0] += t->shape[0];
  }
  out->data = bytes->data();
  out->nbytes = bytes->size();
  owned_bytes_.push_back(std::move(bytes));
  views_.push_back(out);
  return out.get();
}

}  // namespace moxin
