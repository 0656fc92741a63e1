// A fixed-capacity map that evicts its least recently used entry to make room: bounds caches
// whose keys users control (e.g. one captured decode graph per batch size and context bucket,
// each holding device memory).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "core/check.hpp"

namespace moxin {

template <class Key, class Value>
class LruCache {
 public:
  explicit LruCache(size_t capacity) : capacity_(capacity) {
    MOXIN_CHECK(capacity > 0, "[cache] an LRU cache needs room for at least one entry");
  }

  // The value stored under `key` (now the most recently used), or nullptr.
  Value* find(const Key& key) {
    for (Entry& e : entries_)
      if (e.key == key) {
        e.last_use = ++clock_;
        return e.value.get();
      }
    return nullptr;
  }

  // Whether inserting a new key now would evict an entry (lets callers quiesce users first).
  bool full() const { return entries_.size() >= capacity_; }

  // Stores `value` under `key` (which must not be present), evicting the least recently used
  // entry if the cache is full. Returns the stored value.
  Value& insert(Key key, std::unique_ptr<Value> value) {
    if (full()) {
      size_t oldest = 0;
      for (size_t i = 1; i < entries_.size(); ++i)
        if (entries_[i].last_use < entries_[oldest].last_use) oldest = i;
      entries_.erase(entries_.begin() + static_cast<std::ptrdiff_t>(oldest));
    }
    entries_.push_back(Entry{std::move(key), std::move(value), ++clock_});
    return *entries_.back().value;
  }

  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    Key key;
    std::unique_ptr<Value> value;
    uint64_t last_use = 0;
  };
  size_t capacity_;
  uint64_t clock_ = 0;
  std::vector<Entry> entries_;  // a few dozen at most: a linear scan beats a list + map here
};

}  // namespace moxin
