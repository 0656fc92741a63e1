// moxin._core.preprocess and read_file: image bytes in, numpy arrays out, the GIL released
// while decoding and resizing.
#include <nanobind/ndarray.h>
#include <nanobind/stl/string.h>

#include <utility>
#include <vector>

#include "bindings.hpp"
#include "moxin/moxin.hpp"
#include "moxin/preprocess.hpp"

namespace nb = nanobind;
using namespace nb::literals;

namespace moxin::python {
namespace {

// A numpy array that owns the vector's storage (no copy): the capsule frees it with the array.
template <class T>
nb::ndarray<nb::numpy, T> to_numpy(std::vector<T> values, std::initializer_list<size_t> shape) {
  auto* owned = new std::vector<T>(std::move(values));
  nb::capsule owner(owned, [](void* p) noexcept { delete static_cast<std::vector<T>*>(p); });
  return nb::ndarray<nb::numpy, T>(owned->data(), shape, owner);
}

nb::bytes read_file_bytes(const std::string& path) {
  std::vector<uint8_t> bytes;
  {
    nb::gil_scoped_release nogil;
    bytes = read_file(path);
  }
  return nb::bytes(bytes.data(), bytes.size());
}

// The same arrays, names and shapes as the safetensors file `moxin preprocess` writes.
nb::dict preprocess_bytes(const nb::bytes& image_file, int size, uint64_t max_pixels) {
  VisionInputs in;
  {
    // `image_file` is immutable and referenced by the caller: safe to read without the GIL.
    const std::span<const uint8_t> bytes(static_cast<const uint8_t*>(image_file.data()), image_file.size());
    nb::gil_scoped_release nogil;
    in = preprocess(bytes, size, max_pixels);
  }
  const auto s = static_cast<size_t>(in.size);
  nb::dict out;
  out["resized"] = to_numpy(std::move(in.resized), {s, s, 3});
  out["dino"] = to_numpy(std::move(in.dino), {1, s, s, 3});
  out["siglip"] = to_numpy(std::move(in.siglip), {1, s, s, 3});
  return out;
}

}  // namespace

void bind_preprocess(nb::module_& m) {
  m.def("read_file", &read_file_bytes, "path"_a, "The whole file as bytes (moxin::read_file).");
  m.def("preprocess", &preprocess_bytes, "image_file"_a, "size"_a, "max_pixels"_a,
        "Decodes an encoded image and returns the vision inputs, as `moxin preprocess` writes them.");
}

}  // namespace moxin::python
