// config.json and model.safetensors.index.json: input = config NUL index. The directory also
// holds one valid shard, so an index naming it gets past the file checks.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "io/model_config.hpp"
#include "io/safetensors.hpp"
#include "moxin/error.hpp"

namespace {

// A one-tensor shard ("t": F32 [2]) written by hand in the safetensors layout.
void write_shard() {
  const std::string header = R"({"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string bytes(8, '\0');
  bytes[0] = static_cast<char>(header.size());
  bytes += header + std::string(8, '\0');
  moxin::fuzz::write_file("model-00001-of-00001.safetensors", bytes);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  static const bool shard_written = (write_shard(), true);
  (void)shard_written;
  const auto [config, index] = fuzz::split_at_nul(fuzz::as_text(data, size));
  try {
    (void)read_config_json(fuzz::write_file("config.json", config));
  } catch (const Error&) {
  }
  try {
    fuzz::write_file("model.safetensors.index.json", index);
    (void)TensorStore::open_dir(fuzz::scratch_dir().string());
  } catch (const Error&) {
  }
  return 0;
}
