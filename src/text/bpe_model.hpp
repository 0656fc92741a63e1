// The BPE model of a tokenizer.json: piece <-> id tables, merge ranks, and the merge loop.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "text/tokenizer_spec.hpp"

namespace moxin::text {

// Hash for string keys that also accepts string_view lookups without allocating.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

class BpeModel {
 public:
  BpeModel(BpeSpec spec, const std::string& origin);
  // pieces_ points into vocab_'s nodes: moving keeps them, copying would not.
  BpeModel(const BpeModel&) = delete;
  BpeModel& operator=(const BpeModel&) = delete;
  BpeModel(BpeModel&&) = default;

  // Appends the ids of one pre-tokenized word (valid UTF-8, not empty).
  void tokenize(std::string_view word, std::vector<int32_t>& out) const;

  std::optional<int32_t> piece_id(std::string_view piece) const;
  const std::string* piece(int32_t id) const;  // nullptr when no piece has this id
  size_t size() const { return vocab_.size(); }
  size_t id_bound() const { return pieces_.size(); }  // largest id + 1
  std::optional<int32_t> unk_id() const { return unk_id_; }

 private:
  struct Merge {
    uint32_t rank;
    int32_t new_id;
  };
  static uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
  const Merge* find_merge(int32_t a, int32_t b) const;
  void apply_merges(std::vector<int32_t>& symbols) const;

  PieceMap vocab_;
  std::vector<const std::string*> pieces_;  // by id, pointing into vocab_'s keys
  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_;  // id of "<0xHH>", -1 when absent
  bool byte_fallback_;
  bool fuse_unk_;
  bool ignore_merges_;
  std::optional<int32_t> unk_id_;
};

}  // namespace moxin::text
