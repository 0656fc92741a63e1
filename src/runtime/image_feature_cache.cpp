#include "runtime/image_feature_cache.hpp"

namespace moxin {

std::optional<Tensor> ImageFeatureCache::find(const Digest& image) {
  auto it = entries_.find(image);
  if (it == entries_.end()) return std::nullopt;
  recency_.splice(recency_.begin(), recency_, it->second.recency);
  return it->second.projected;
}

void ImageFeatureCache::insert(const Digest& image, Tensor projected) {
  if (capacity_ == 0 || entries_.count(image)) return;
  while (entries_.size() >= capacity_) {
    entries_.erase(recency_.back());
    recency_.pop_back();
  }
  recency_.push_front(image);
  entries_.emplace(image, Entry{std::move(projected), recency_.begin()});
}

}  // namespace moxin
