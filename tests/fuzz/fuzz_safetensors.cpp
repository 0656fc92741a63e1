// safetensors header + tensor table: any file either opens with every tensor inside the data
// section (touched here, so ASan sees a stray pointer) or is refused with moxin::Error.
#include <cstddef>
#include <cstdint>

#include "fuzz_support.hpp"
#include "io/safetensors.hpp"
#include "moxin/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace moxin;
  const std::string path = fuzz::write_file("model.safetensors", fuzz::as_text(data, size));
  try {
    const auto file = SafetensorsFile::open(path, SafetensorsLimits{1 << 20});
    volatile uint8_t sink = 0;
    for (const TensorInfo& t : file->tensors()) {
      if (t.nbytes > 0) sink = sink ^ t.data[0] ^ t.data[t.nbytes - 1];
      if (t.numel() * static_cast<int64_t>(dtype_size(t.dtype)) != static_cast<int64_t>(t.nbytes)) __builtin_trap();
    }
  } catch (const Error&) {
  }
  return 0;
}
