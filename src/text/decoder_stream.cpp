// The streaming decoder chain. Steps before the first Fuse see whole pieces and only
// ByteFallback has to wait (a run of byte pieces becomes text or U+FFFDs only once it ends);
// Fuse turns the rest of the stream into one growing piece, on which the later steps hold back
// just what the next fragment could still change.
#include <algorithm>
#include <utility>

#include "text/decoder.hpp"
#include "text/text_pipeline.hpp"
#include "text/utf8.hpp"

namespace moxin::text {
namespace {

using PieceStage = DecoderStream::PieceStage;
using TextStage = DecoderStream::TextStage;

struct ReplacePieces final : PieceStage {
  const DecoderStep& step;
  explicit ReplacePieces(const DecoderStep& s) : step(s) {}
  void push(std::string piece, std::vector<std::string>& out) override {
    out.push_back(replace_all(piece, step.pattern, step.content));
  }
};

struct StripPieces final : PieceStage {
  const DecoderStep& step;
  explicit StripPieces(const DecoderStep& s) : step(s) {}
  void push(std::string piece, std::vector<std::string>& out) override {
    out.push_back(strip_piece(piece, step.pattern, step.strip_start, step.strip_stop));
  }
};

struct MetaspacePieces final : PieceStage {
  const DecoderStep& step;
  size_t seen = 0;
  explicit MetaspacePieces(const DecoderStep& s) : step(s) {}
  void push(std::string piece, std::vector<std::string>& out) override {
    out.push_back(metaspace_piece(piece, step.metaspace, seen++ == 0));
  }
};

struct ByteFallbackPieces final : PieceStage {
  std::string run;  // bytes of the byte pieces since the last other piece
  void push(std::string piece, std::vector<std::string>& out) override {
    if (const auto byte = byte_fallback_value(piece)) {
      run += static_cast<char>(*byte);
      return;
    }
    flush(out);
    out.push_back(std::move(piece));
  }
  void flush(std::vector<std::string>& out) override {
    append_byte_run(run, out);
    run.clear();
  }
};

// Replace on a growing text: holds back a tail that may be the start of an occurrence.
struct ReplaceText final : TextStage {
  const DecoderStep& step;
  std::string carry;
  explicit ReplaceText(const DecoderStep& s) : step(s) {}
  std::string push(std::string_view fragment) override {
    std::string buffer = std::move(carry);
    buffer.append(fragment);
    std::string out;
    size_t pos = 0;
    for (size_t hit = buffer.find(step.pattern); hit != std::string::npos; hit = buffer.find(step.pattern, pos)) {
      out.append(buffer, pos, hit - pos);
      out.append(step.content);
      pos = hit + step.pattern.size();
    }
    size_t keep = std::max(pos, buffer.size() >= step.pattern.size() ? buffer.size() - step.pattern.size() + 1 : 0);
    while (keep < buffer.size() && step.pattern.compare(0, buffer.size() - keep, buffer, keep) != 0) ++keep;
    out.append(buffer, pos, keep - pos);
    carry = buffer.substr(keep);
    return out;
  }
  std::string flush() override { return std::exchange(carry, {}); }
};

// ByteFallback after Fuse: the single fused piece is a byte piece only if it is exactly
// "<0xHH>", so the first six bytes wait until more arrive.
struct ByteFallbackText final : TextStage {
  std::string held;
  bool decided = false;
  std::string push(std::string_view fragment) override {
    if (decided) return std::string(fragment);
    held.append(fragment);
    if (held.size() <= 6) return {};
    decided = true;
    return std::exchange(held, {});
  }
  std::string flush() override {
    std::vector<std::string> out;
    if (const auto byte = byte_fallback_value(held); byte && !decided) {
      append_byte_run(std::string(1, static_cast<char>(*byte)), out);
      held.clear();
      return out.front();
    }
    return std::exchange(held, {});
  }
};

// Strip on the fused piece: drops up to `start` leading characters of the stream and holds a
// trailing run of the character until something else follows (the end drops up to `stop`).
struct StripText final : TextStage {
  const DecoderStep& step;
  size_t leading_dropped = 0;
  bool leading_done;
  size_t trailing_run = 0;
  explicit StripText(const DecoderStep& s) : step(s), leading_done(s.strip_start == 0) {}
  std::string push(std::string_view fragment) override {
    std::string out;
    for (size_t pos = 0; pos < fragment.size();) {
      const size_t len = utf8_length(static_cast<unsigned char>(fragment[pos]));
      const std::string_view ch = fragment.substr(pos, len);
      pos += len;
      const bool is_strip_char = ch == step.pattern;
      if (!leading_done) {
        if (is_strip_char) {
          leading_done = ++leading_dropped == step.strip_start;
          continue;
        }
        leading_done = true;
      }
      if (is_strip_char && step.strip_stop > 0) {
        ++trailing_run;
        continue;
      }
      for (; trailing_run > 0; --trailing_run) out.append(step.pattern);
      out.append(ch);
    }
    return out;
  }
  std::string flush() override {
    std::string out;
    for (size_t i = std::min(trailing_run, step.strip_stop); i < trailing_run; ++i) out.append(step.pattern);
    trailing_run = 0;
    return out;
  }
};

// Metaspace after Fuse: everything belongs to the first (only) piece.
struct MetaspaceText final : TextStage {
  const DecoderStep& step;
  explicit MetaspaceText(const DecoderStep& s) : step(s) {}
  std::string push(std::string_view fragment) override { return metaspace_piece(fragment, step.metaspace, true); }
};

std::unique_ptr<PieceStage> make_piece_stage(const DecoderStep& step) {
  switch (step.kind) {
    case DecoderStep::Kind::Replace:
      return std::make_unique<ReplacePieces>(step);
    case DecoderStep::Kind::ByteFallback:
      return std::make_unique<ByteFallbackPieces>();
    case DecoderStep::Kind::Strip:
      return std::make_unique<StripPieces>(step);
    case DecoderStep::Kind::Metaspace:
      return std::make_unique<MetaspacePieces>(step);
    case DecoderStep::Kind::Fuse:
      break;
  }
  return nullptr;
}

std::unique_ptr<TextStage> make_text_stage(const DecoderStep& step) {
  switch (step.kind) {
    case DecoderStep::Kind::Replace:
      return std::make_unique<ReplaceText>(step);
    case DecoderStep::Kind::ByteFallback:
      return std::make_unique<ByteFallbackText>();
    case DecoderStep::Kind::Strip:
      return std::make_unique<StripText>(step);
    case DecoderStep::Kind::Metaspace:
      return std::make_unique<MetaspaceText>(step);
    case DecoderStep::Kind::Fuse:
      break;  // a second Fuse changes nothing
  }
  return nullptr;
}

}  // namespace

DecoderStream::DecoderStream(const std::vector<DecoderStep>& steps, bool has_decoder) : has_decoder_(has_decoder) {
  for (const DecoderStep& step : steps) {
    if (step.kind == DecoderStep::Kind::Fuse) fused_ = true;
    if (!fused_) {
      piece_stages_.push_back(make_piece_stage(step));
    } else if (auto stage = make_text_stage(step)) {
      text_stages_.push_back(std::move(stage));
    }
  }
}

DecoderStream::~DecoderStream() = default;
DecoderStream::DecoderStream(DecoderStream&&) noexcept = default;
DecoderStream& DecoderStream::operator=(DecoderStream&&) noexcept = default;

std::vector<std::string> DecoderStream::run_piece_stages(size_t from, std::vector<std::string> pieces) {
  for (size_t i = from; i < piece_stages_.size(); ++i) {
    std::vector<std::string> out;
    for (auto& p : pieces) piece_stages_[i]->push(std::move(p), out);
    pieces = std::move(out);
  }
  return pieces;
}

std::string DecoderStream::run_text_stages(size_t from, std::string text) {
  for (size_t i = from; i < text_stages_.size(); ++i) text = text_stages_[i]->push(text);
  return text;
}

std::string DecoderStream::emit(const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) {
    if (!has_decoder_ && emitted_any_) out += ' ';
    emitted_any_ = true;
    out += fused_ ? run_text_stages(0, p) : p;
  }
  return out;
}

std::string DecoderStream::push(std::string piece) {
  if (!has_decoder_) return emit({std::move(piece)});
  return emit(run_piece_stages(0, {std::move(piece)}));
}

std::string DecoderStream::flush() {
  std::string out;
  for (size_t i = 0; i < piece_stages_.size(); ++i) {
    std::vector<std::string> pieces;
    piece_stages_[i]->flush(pieces);
    out += emit(run_piece_stages(i + 1, std::move(pieces)));
  }
  for (size_t i = 0; i < text_stages_.size(); ++i) out += run_text_stages(i + 1, text_stages_[i]->flush());
  return out;
}

}  // namespace moxin::text
