#include "io/safetensors.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "io/json_strict.hpp"
#include "io/mapped_file.hpp"

namespace moxin {
namespace {

using nlohmann::json;

constexpr std::string_view kSupportedDTypes = "F32, F16, BF16, I8, U8, I32, U32, I64";

// A header entry checked against the data section, before it becomes a TensorInfo.
struct Entry {
  TensorInfo info;
  uint64_t begin = 0;
  uint64_t end = 0;
};

// Reads a JSON value that must be a non-negative integer fitting in int64.
bool read_count(const json& value, uint64_t& out) {
  if (!value.is_number_integer()) return false;
  if (value.is_number_unsigned()) {
    out = value.get<uint64_t>();
    return out <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  }
  const auto v = value.get<int64_t>();
  out = static_cast<uint64_t>(v);
  return v >= 0;
}

class HeaderParser {
 public:
  HeaderParser(const std::string& path, uint64_t data_size) : path_(path), data_size_(data_size) {}

  Entry parse_entry(const std::string& name, const json& entry) const {
    const std::string where = cat("[safetensors] ", path_, ": tensor '", name, "'");
    MOXIN_CHECK(entry.is_object(), where, " is described by ", describe_json(entry),
                ", expected an object with dtype, shape and data_offsets");
    for (const auto& [key, value] : entry.items())
      MOXIN_CHECK(key == "dtype" || key == "shape" || key == "data_offsets", where,
                  " has the unknown field '", key, "'");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      MOXIN_CHECK(entry.contains(key), where, " has no '", key, "' field");

    Entry e;
    e.info.name = name;
    e.info.file = path_;
    const json& dtype = entry["dtype"];
    MOXIN_CHECK(dtype.is_string(), where, " has dtype ", describe_json(dtype),
                ", expected a string");
    const auto parsed = dtype_from_name(dtype.get<std::string>());
    MOXIN_CHECK(parsed.has_value(), where, " has dtype ", dtype.get<std::string>(),
                ", which moxin does not support (supported: ", kSupportedDTypes, ")");
    e.info.dtype = *parsed;

    const json& shape = entry["shape"];
    MOXIN_CHECK(shape.is_array(), where, " has shape ", describe_json(shape),
                ", expected an array");
    uint64_t bytes = dtype_size(e.info.dtype);
    for (const json& dim : shape) {
      uint64_t d = 0;
      MOXIN_CHECK(read_count(dim, d), where, " has the shape entry ", describe_json(dim),
                  ", expected a non-negative integer");
      e.info.shape.push_back(static_cast<int64_t>(d));
      MOXIN_CHECK(!__builtin_mul_overflow(bytes, d, &bytes), where, " has shape ",
                  shape_str(e.info.shape), "..., whose byte count overflows 64 bits");
    }

    const json& offsets = entry["data_offsets"];
    MOXIN_CHECK(offsets.is_array() && offsets.size() == 2 && read_count(offsets[0], e.begin) &&
                    read_count(offsets[1], e.end),
                where, " has data_offsets ", offsets.dump(),
                ", expected [begin, end] (byte offsets)");
    MOXIN_CHECK(e.begin <= e.end, where, " has data_offsets [", e.begin, ", ", e.end,
                "] with begin after end");
    MOXIN_CHECK(e.end <= data_size_, where, " ends at byte ", e.end, " but the data section has ",
                data_size_, " bytes (truncated download?)");
    MOXIN_CHECK(e.end - e.begin == bytes, where, " holds ", e.end - e.begin,
                " bytes (data_offsets [", e.begin, ", ", e.end, "]) but ", dtype_name(e.info.dtype),
                " ", shape_str(e.info.shape), " needs ", bytes, " bytes");
    e.info.nbytes = static_cast<size_t>(bytes);
    return e;
  }

  std::map<std::string, std::string> parse_metadata(const json& value) const {
    const std::string where = cat("[safetensors] ", path_, ": __metadata__");
    MOXIN_CHECK(value.is_object(), where, " is ", describe_json(value), ", expected an object");
    std::map<std::string, std::string> out;
    for (const auto& [key, v] : value.items()) {
      MOXIN_CHECK(v.is_string(), where, " maps '", key, "' to ", describe_json(v),
                  ", expected a string");
      out[key] = v.get<std::string>();
    }
    return out;
  }

  // Tensors sorted by offset must not share a byte (empty tensors occupy none).
  void check_no_overlap(std::vector<Entry>& entries) const {
    std::sort(entries.begin(), entries.end(), [](const Entry& a, const Entry& b) {
      return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
    });
    const Entry* previous = nullptr;
    for (const Entry& e : entries) {
      if (e.begin == e.end) continue;
      if (previous)
        MOXIN_CHECK(e.begin >= previous->end, "[safetensors] ", path_, ": tensors '",
                    previous->info.name, "' (bytes ", previous->begin, "..", previous->end,
                    ") and '", e.info.name, "' (bytes ", e.begin, "..", e.end, ") overlap");
      previous = &e;
    }
  }

 private:
  const std::string& path_;
  uint64_t data_size_;
};

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::shape_str() const { return moxin::shape_str(shape); }

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

std::shared_ptr<SafetensorsFile> SafetensorsFile::open(const std::string& path,
                                                       const SafetensorsLimits& limits) {
  std::shared_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->map_ = std::make_shared<MappedFile>(path);
  const uint8_t* bytes = file->map_->data();
  const uint64_t size = file->map_->size();

  MOXIN_CHECK(size >= 8, "[safetensors] ", path, ": the file has ", size,
              " bytes, too few for the 8-byte header length (empty file or truncated download?)");
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);  // little-endian, as are all hosts we build for
  MOXIN_CHECK(header_len <= limits.max_header_bytes, "[safetensors] ", path, ": header length ",
              header_len, " exceeds the limit of ", limits.max_header_bytes,
              " bytes (not a safetensors file?)");
  MOXIN_CHECK(header_len <= size - 8, "[safetensors] ", path, ": header length ", header_len,
              " runs past the end of the file (", size,
              " bytes): truncated download or not a safetensors file");

  const std::string_view text(reinterpret_cast<const char*>(bytes + 8), header_len);
  const json header = parse_json_strict(text, cat("[safetensors] ", path, ": header"));
  MOXIN_CHECK(header.is_object(), "[safetensors] ", path, ": header is ", describe_json(header),
              ", expected a JSON object");

  const uint64_t data_offset = 8 + header_len;
  const HeaderParser parser(path, size - data_offset);
  std::vector<Entry> entries;
  for (const auto& [name, value] : header.items()) {
    if (name == "__metadata__")
      file->metadata_ = parser.parse_metadata(value);
    else
      entries.push_back(parser.parse_entry(name, value));
  }
  parser.check_no_overlap(entries);

  // Kept in file order, so whoever streams all tensors reads the file front to back.
  for (Entry& e : entries) {
    e.info.data = bytes + data_offset + e.begin;
    // Any header length is legal, so a tensor may start at an odd address: the backends read
    // elements through typed pointers, which must be aligned to the element size. Such a
    // tensor is served from an aligned copy (writers pad the header to 8 bytes, so files
    // written by safetensors itself need none).
    if (reinterpret_cast<uintptr_t>(e.info.data) % dtype_size(e.info.dtype) != 0)
      e.info.data = file->aligned_copy(e.info.data, e.info.nbytes);
    file->index_[e.info.name] = file->tensors_.size();
    file->tensors_.push_back(std::move(e.info));
  }
  return file;
}

const uint8_t* SafetensorsFile::aligned_copy(const uint8_t* data, size_t nbytes) {
  constexpr size_t kAlign = 64;  // a cache line: what any vector load wants
  const size_t rounded = (std::max<size_t>(nbytes, 1) + kAlign - 1) / kAlign * kAlign;
  auto* copy = static_cast<uint8_t*>(std::aligned_alloc(kAlign, rounded));
  MOXIN_CHECK(copy != nullptr, "[safetensors] ", path_, ": out of memory copying a misaligned tensor of ", nbytes,
              " bytes");
  aligned_copies_.emplace_back(copy);
  std::memcpy(copy, data, nbytes);
  return copy;
}

const TensorInfo* SafetensorsFile::find(const std::string& name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace moxin
