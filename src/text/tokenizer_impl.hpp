// What a loaded tokenizer holds; shared by the encoder, the batch and the streaming decoder.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "text/added_vocabulary.hpp"
#include "text/bpe_model.hpp"
#include "text/tokenizer_spec.hpp"

namespace moxin::text {

struct TokenizerImpl {
  TokenizerImpl(TokenizerSpec spec, std::string origin);

  void encode(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t>& ids) const;
  // The piece an id decodes from (an added token's, else the model's); throws for unknown ids.
  const std::string& decode_piece(int32_t id) const;
  bool skipped_as_special(int32_t id) const;
  std::optional<int32_t> token_id(std::string_view piece) const;

  std::string origin;
  TokenizerSpec spec;  // normalizer, pre-tokenizer, decoder and template (the model moves out)
  BpeModel model;
  AddedVocabulary added;
  std::vector<const std::string*> decode_pieces;  // by id
  std::vector<bool> special_ids;                  // by id
  PieceMap added_ids;                             // added token content -> id
  size_t vocab_size = 0;

 private:
  void encode_text(std::string_view text, bool parse_special, std::vector<int32_t>& ids) const;
};

}  // namespace moxin::text
