#include "text/bpe_model.hpp"

#include <queue>

#include "core/check.hpp"
#include "core/token_id.hpp"
#include "text/utf8.hpp"

namespace moxin::text {
namespace {

std::string byte_piece(unsigned byte) {
  static const char* hex = "0123456789ABCDEF";
  return std::string{'<', '0', 'x', hex[byte >> 4], hex[byte & 15], '>'};
}

}  // namespace

BpeModel::BpeModel(BpeSpec spec, const std::string& origin)
    : byte_fallback_(spec.byte_fallback), fuse_unk_(spec.fuse_unk), ignore_merges_(spec.ignore_merges) {
  vocab_.reserve(spec.vocab.size());
  for (auto& [piece, id] : spec.vocab) {
    MOXIN_CHECK(id >= 0 && id <= kMaxTokenId, "[tokenizer] ", origin, ": model vocab id ", id, " of \"", piece,
                "\" is outside [0, ", kMaxTokenId, "]");
    MOXIN_CHECK(find_invalid_utf8(piece) == std::string::npos, "[tokenizer] ", origin, ": model vocab piece with id ",
                id, " is not valid UTF-8");
    const auto [it, inserted] = vocab_.emplace(std::move(piece), static_cast<int32_t>(id));
    MOXIN_CHECK(inserted, "[tokenizer] ", origin, ": model vocab lists \"", it->first, "\" twice");
    if (pieces_.size() <= static_cast<size_t>(id)) pieces_.resize(static_cast<size_t>(id) + 1, nullptr);
    MOXIN_CHECK(pieces_[id] == nullptr, "[tokenizer] ", origin, ": model vocab gives id ", id, " to both \"",
                *pieces_[id], "\" and \"", it->first, "\"");
    pieces_[id] = &it->first;
  }

  merges_.reserve(spec.merges.size());
  for (size_t rank = 0; rank < spec.merges.size(); ++rank) {
    // Named references, not a structured binding: clang before 16 cannot capture those.
    const std::string& a = spec.merges[rank].first;
    const std::string& b = spec.merges[rank].second;
    const auto id_of = [&](const std::string& piece) {
      const auto id = piece_id(piece);
      MOXIN_CHECK(id.has_value(), "[tokenizer] ", origin, ": merge ", rank + 1, " (\"", a, "\" + \"", b, "\") uses \"",
                  piece, "\", which is not in the model vocab");
      return *id;
    };
    const int32_t a_id = id_of(a), b_id = id_of(b), new_id = id_of(a + b);
    // A repeated pair keeps its last rank, as a hash map filled in order does in HF.
    merges_[pair_key(a_id, b_id)] = Merge{static_cast<uint32_t>(rank), new_id};
  }

  for (unsigned byte = 0; byte < 256; ++byte) byte_ids_[byte] = piece_id(byte_piece(byte)).value_or(-1);
  if (spec.unk_token) {
    unk_id_ = piece_id(*spec.unk_token);
    MOXIN_CHECK(unk_id_.has_value(), "[tokenizer] ", origin, ": model unk_token \"", *spec.unk_token,
                "\" is not in the model vocab");
  }
}

std::optional<int32_t> BpeModel::piece_id(std::string_view piece) const {
  const auto it = vocab_.find(piece);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::piece(int32_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= pieces_.size()) return nullptr;
  return pieces_[id];
}

const BpeModel::Merge* BpeModel::find_merge(int32_t a, int32_t b) const {
  const auto it = merges_.find(pair_key(a, b));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (ignore_merges_) {
    if (const auto id = piece_id(word)) {
      out.push_back(*id);
      return;
    }
  }
  // One symbol per character; characters missing from the vocab become their UTF-8 bytes'
  // <0xHH> pieces, or else (consecutive ones fused when fuse_unk) the unk piece, in HF's order:
  // a pending unk is only written out before the next in-vocab character or at the end.
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  bool unk_pending = false;
  for (size_t pos = 0; pos < word.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(word[pos]));
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    if (const auto id = piece_id(ch)) {
      if (unk_pending) symbols.push_back(*unk_id_);
      unk_pending = false;
      symbols.push_back(*id);
      continue;
    }
    if (byte_fallback_) {
      bool all_bytes = true;
      for (char c : ch) all_bytes = all_bytes && byte_ids_[static_cast<unsigned char>(c)] >= 0;
      if (all_bytes) {
        for (char c : ch) symbols.push_back(byte_ids_[static_cast<unsigned char>(c)]);
        continue;
      }
    }
    if (!unk_id_) continue;  // HF drops the character when there is no unk piece
    if (unk_pending && !fuse_unk_) symbols.push_back(*unk_id_);
    unk_pending = true;
  }
  if (unk_pending) symbols.push_back(*unk_id_);
  apply_merges(symbols);
  out.insert(out.end(), symbols.begin(), symbols.end());
}

// Repeatedly merges the adjacent pair of lowest rank (leftmost first among equal ranks), with
// a heap of candidate merges and a linked list of live symbols: O(n log n) in the word length.
// Stale heap entries are recognised as HF does, by re-looking up the pair now at that position.
void BpeModel::apply_merges(std::vector<int32_t>& symbols) const {
  const int n = static_cast<int>(symbols.size());
  if (n < 2) return;
  struct Candidate {
    uint32_t rank;
    int pos;
    int32_t new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> heap;
  std::vector<int> prev(n), next(n);
  std::vector<bool> alive(n, true);
  for (int i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  const auto push_candidate = [&](int left) {
    if (left < 0 || next[left] < 0) return;
    if (const Merge* m = find_merge(symbols[left], symbols[next[left]])) heap.push({m->rank, left, m->new_id});
  };
  for (int i = 0; i + 1 < n; ++i) push_candidate(i);

  while (!heap.empty()) {
    const Candidate top = heap.top();
    heap.pop();
    if (!alive[top.pos] || next[top.pos] < 0) continue;
    const int right = next[top.pos];
    const Merge* current = find_merge(symbols[top.pos], symbols[right]);
    if (current == nullptr || current->new_id != top.new_id) continue;
    symbols[top.pos] = top.new_id;
    alive[right] = false;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    push_candidate(prev[top.pos]);
    push_candidate(top.pos);
  }
  int kept = 0;
  for (int i = 0; i < n; ++i) {
    if (alive[i]) symbols[kept++] = symbols[i];
  }
  symbols.resize(kept);
}

}  // namespace moxin::text
