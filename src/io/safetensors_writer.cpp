#include "io/safetensors_writer.hpp"

#include <cstdio>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/check.hpp"

namespace moxin {

void SafetensorsWriter::add(const std::string& name, DType dtype,
                            const std::vector<int64_t>& shape, const void* data) {
  int64_t numel = 1;
  for (int64_t d : shape) {
    MOXIN_CHECK(d >= 0, "[safetensors writer] tensor '", name, "' has a negative dimension");
    numel *= d;
  }
  for (const auto& e : entries_)
    MOXIN_CHECK(e.name != name, "[safetensors writer] tensor '", name, "' added twice");
  Entry e{name, dtype, shape, std::vector<uint8_t>(static_cast<size_t>(numel) * dtype_size(dtype))};
  if (!e.bytes.empty()) std::memcpy(e.bytes.data(), data, e.bytes.size());
  entries_.push_back(std::move(e));
}

void SafetensorsWriter::write(const std::string& path) const {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  size_t offset = 0;
  for (const auto& e : entries_) {
    header[e.name] = {{"dtype", std::string(dtype_name(e.dtype))},
                      {"shape", e.shape},
                      {"data_offsets", {offset, offset + e.bytes.size()}}};
    offset += e.bytes.size();
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the payload 8-byte aligned
  const uint64_t header_len = text.size();

  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    MOXIN_CHECK(out.good(), "[safetensors writer] cannot create '", tmp, "'");
    out.write(reinterpret_cast<const char*>(&header_len), 8);  // little-endian hosts only
    out.write(text.data(), static_cast<std::streamsize>(text.size()));
    for (const auto& e : entries_)
      out.write(reinterpret_cast<const char*>(e.bytes.data()),
                static_cast<std::streamsize>(e.bytes.size()));
    out.flush();
    MOXIN_CHECK(out.good(), "[safetensors writer] write to '", tmp, "' failed (disk full?)");
  }
  MOXIN_CHECK(std::rename(tmp.c_str(), path.c_str()) == 0, "[safetensors writer] cannot rename '",
              tmp, "' to '", path, "'");
}

}  // namespace moxin
