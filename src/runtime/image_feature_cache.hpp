// Projected image features ([image tokens, hidden] on the backend) by the image file's SHA-256,
// least recently used out first: a conversation's later turns, and every request about the
// same picture, skip the vision encoders.
#pragma once

#include <cstddef>
#include <list>
#include <optional>
#include <unordered_map>

#include "backend/tensor.hpp"
#include "runtime/content_hash.hpp"

namespace moxin {

class ImageFeatureCache {
 public:
  explicit ImageFeatureCache(size_t capacity) : capacity_(capacity) {}

  std::optional<Tensor> find(const Digest& image);  // marks it most recently used
  void insert(const Digest& image, Tensor projected);
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Tensor projected;
    std::list<Digest>::iterator recency;
  };
  size_t capacity_;
  std::unordered_map<Digest, Entry, DigestHash> entries_;
  std::list<Digest> recency_;  // most recently used first
};

}  // namespace moxin
