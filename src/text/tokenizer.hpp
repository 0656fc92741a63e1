// The text tokenizer: reads a Hugging Face tokenizer.json (Llama/Mistral-style BPE with byte
// fallback, legacy Prepend/Replace normalizer or Metaspace pre-tokenizer) and gives the same
// ids and text as the Hugging Face `tokenizers` library.
//
// Encoding input must be valid UTF-8: anything else throws moxin::Error (HF itself only takes
// Python str, which cannot hold such bytes, and refuses lone surrogates). Files with components
// this engine cannot reproduce exactly (other normalizers, regex patterns, single_word added
// tokens, BPE dropout, ...) are rejected when loaded, never approximated. A loaded Tokenizer is
// immutable: copies share it and its const methods may run on several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moxin {

namespace text {
struct TokenizerImpl;
class DecoderStream;
}  // namespace text

class Tokenizer {
 public:
  static Tokenizer from_file(const std::string& path);  // a tokenizer.json
  // The same from JSON text; `origin` names it in error messages.
  static Tokenizer from_json(const std::string& json_text, const std::string& origin = "tokenizer.json");

  // add_bos applies the file's TemplateProcessing (for Mistral: BOS first), as HF's
  // add_special_tokens=True. Without parse_special, special added tokens ("<s>", "</s>",
  // "<PAD>", "<unk>") written in the text are plain text (HF with encode_special_tokens=True);
  // with it they become their ids, as HF does by default. Non-special added tokens always match.
  std::vector<int32_t> encode(std::string_view text, bool add_bos = true, bool parse_special = false) const;

  // As HF decode. skip_special drops special added tokens. An id with no piece throws.
  std::string decode(std::span<const int32_t> ids, bool skip_special = true) const;

  int32_t bos_id() const;  // the template's leading special token, else "<s>"; throws if none
  int32_t eos_id() const;  // "</s>"; throws if the vocabulary has none
  int32_t unk_id() const;  // the BPE model's unk_token; throws if it has none
  // Pieces including added tokens, counted as HF's get_vocab_size(with_added_tokens=True).
  size_t vocab_size() const;
  std::optional<int32_t> token_id(std::string_view piece) const;  // added tokens first, then the model
  bool is_special(int32_t id) const;  // true for the ids decode(..., skip_special=true) drops

 private:
  friend class StreamDecoder;
  explicit Tokenizer(std::shared_ptr<const text::TokenizerImpl> impl);
  std::shared_ptr<const text::TokenizerImpl> impl_;
};

// Streaming detokenizer for generation: push ids one at a time and get the newly completed
// text. It holds back what a later id could still change: a run of byte-fallback pieces
// (<0xE2> ...) until a non-byte piece ends it (HF turns a whole run into U+FFFDs when any of it
// is not valid UTF-8), and leading/trailing characters the decoder's Strip may remove. The
// concatenation of all push() results and flush() equals decode() of all ids.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  ~StreamDecoder();
  StreamDecoder(StreamDecoder&&) noexcept;
  StreamDecoder& operator=(StreamDecoder&&) noexcept;

  std::string push(int32_t id);  // throws moxin::Error for an id with no piece
  // Whatever is still held back (incomplete byte runs become U+FFFD as in HF); call it at the
  // end of the stream. Ids pushed afterwards continue the same text.
  std::string flush();

 private:
  std::shared_ptr<const text::TokenizerImpl> impl_;
  std::unique_ptr<text::DecoderStream> stream_;
  bool skip_special_;
};

}  // namespace moxin
