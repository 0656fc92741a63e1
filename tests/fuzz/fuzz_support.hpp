// Helpers shared by the libFuzzer targets: splitting an input into parts, a private scratch
// directory for targets whose parser reads files, and the small seed tokenizer.
#pragma once

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>

#include "text/tokenizer.hpp"

namespace moxin::fuzz {

inline std::string_view as_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// The part before the first NUL byte and the part after it (empty if there is none).
inline std::pair<std::string_view, std::string_view> split_at_nul(std::string_view input) {
  const size_t nul = input.find('\0');
  if (nul == std::string_view::npos) return {input, {}};
  return {input.substr(0, nul), input.substr(nul + 1)};
}

// A directory of this process's own (fuzzers may run in parallel), made once.
inline const std::filesystem::path& scratch_dir() {
  static const std::filesystem::path dir = [] {
    auto d = std::filesystem::temp_directory_path() / ("moxin-fuzz-" + std::to_string(::getpid()));
    std::filesystem::create_directories(d);
    return d;
  }();
  return dir;
}

inline std::string write_file(const std::string& name, std::string_view bytes) {
  const std::string path = (scratch_dir() / name).string();
  std::ofstream(path, std::ios::binary | std::ios::trunc).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return path;
}

// The tokenizer of the seed corpus (tests/fuzz/corpus/tokenizer/small, before its NUL).
inline const Tokenizer& seed_tokenizer() {
  static const Tokenizer tokenizer = [] {
    std::ifstream in(std::string(MOXIN_FUZZ_CORPUS) + "/tokenizer/small", std::ios::binary);
    const std::string seed{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    return Tokenizer::from_json(std::string(split_at_nul(seed).first), "seed tokenizer");
  }();
  return tokenizer;
}

}  // namespace moxin::fuzz
