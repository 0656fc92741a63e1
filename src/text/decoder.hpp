// Pieces -> text, as HF's decoders do it: the batch chain, and a streaming version of the same
// chain that gives the same text piece by piece.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/tokenizer_spec.hpp"

namespace moxin::text {

// HF decode of the pieces (ids already mapped to piece strings, special ones already removed).
std::string decode_pieces(std::vector<std::string> pieces, const std::vector<DecoderStep>& steps, bool has_decoder);

// The single steps, shared by the batch and the streaming chain.
std::optional<unsigned char> byte_fallback_value(std::string_view piece);  // "<0xHH>" -> HH
void append_byte_run(const std::string& bytes,
                     std::vector<std::string>& out);  // valid -> text, else one U+FFFD per byte
std::string strip_piece(std::string_view piece, std::string_view c, size_t start, size_t stop);
std::string metaspace_piece(std::string_view piece, const MetaspaceSpec& spec, bool first);

// Streaming form of decode_pieces: feed pieces one by one; every push returns the text that
// no later piece can change any more, and flush returns the rest, so that the concatenation of
// everything returned equals decode_pieces of all pieces.
class DecoderStream {
 public:
  DecoderStream(const std::vector<DecoderStep>& steps, bool has_decoder);
  ~DecoderStream();
  DecoderStream(DecoderStream&&) noexcept;
  DecoderStream& operator=(DecoderStream&&) noexcept;

  std::string push(std::string piece);
  std::string flush();

  // A stage working on whole pieces (the steps before the first Fuse).
  struct PieceStage {
    virtual ~PieceStage() = default;
    virtual void push(std::string piece, std::vector<std::string>& out) = 0;
    virtual void flush(std::vector<std::string>& out) { (void)out; }
  };
  // A stage working on the one fused piece, which arrives in fragments (steps after Fuse).
  struct TextStage {
    virtual ~TextStage() = default;
    virtual std::string push(std::string_view fragment) = 0;
    virtual std::string flush() { return {}; }
  };

 private:
  std::vector<std::string> run_piece_stages(size_t from, std::vector<std::string> pieces);
  std::string run_text_stages(size_t from, std::string text);
  std::string emit(const std::vector<std::string>& pieces);

  std::vector<std::unique_ptr<PieceStage>> piece_stages_;
  std::vector<std::unique_ptr<TextStage>> text_stages_;
  bool fused_ = false;
  bool has_decoder_;
  bool emitted_any_ = false;  // without a decoder HF joins pieces with single spaces
};

}  // namespace moxin::text
