#include "text/tokenizer.hpp"

#include <filesystem>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include "core/check.hpp"
#include "text/decoder.hpp"
#include "text/text_pipeline.hpp"
#include "text/tokenizer_impl.hpp"
#include "text/utf8.hpp"

namespace moxin {
namespace text {

TokenizerImpl::TokenizerImpl(TokenizerSpec spec_in, std::string origin_in)
    : origin(std::move(origin_in)),
      spec(std::move(spec_in)),
      model(std::move(spec.model), origin),
      added(spec.added_tokens, model, spec.normalizer, origin) {
  // id -> piece for decoding: added tokens decode from their normalized form (HF's
  // simple_id_to_token), everything else from the model.
  std::unordered_set<std::string_view> special_contents;
  size_t added_outside_model = 0;
  for (const AddedToken& t : added.tokens()) {
    if (t.special) special_contents.insert(t.content);
    added_ids.emplace(t.content, t.id);
    if (!model.piece_id(t.content)) ++added_outside_model;
  }
  vocab_size = model.size() + added_outside_model;
  decode_pieces.resize(model.id_bound(), nullptr);
  for (size_t id = 0; id < decode_pieces.size(); ++id) decode_pieces[id] = model.piece(static_cast<int32_t>(id));
  for (const AddedToken& t : added.tokens()) {
    if (decode_pieces.size() <= static_cast<size_t>(t.id)) decode_pieces.resize(static_cast<size_t>(t.id) + 1, nullptr);
    decode_pieces[t.id] = &t.pattern;
  }
  // HF skips a piece when its decoded form is the content of a special token.
  special_ids.resize(decode_pieces.size(), false);
  for (size_t id = 0; id < decode_pieces.size(); ++id) {
    special_ids[id] = decode_pieces[id] != nullptr && special_contents.count(*decode_pieces[id]) > 0;
  }
  for (const TemplateItem& item : spec.single_template) {
    for (int64_t id : item.ids) {
      MOXIN_CHECK(id < static_cast<int64_t>(decode_pieces.size()) && decode_pieces[id] != nullptr, "[tokenizer] ",
                  origin, ": post_processor template uses id ", id, ", which is not in the vocabulary");
    }
  }
}

const std::string& TokenizerImpl::decode_piece(int32_t id) const {
  MOXIN_CHECK(id >= 0 && static_cast<size_t>(id) < decode_pieces.size() && decode_pieces[id] != nullptr,
              "[tokenizer] cannot decode id ", id, ": not in the vocabulary of ", origin, " (", decode_pieces.size(),
              " ids)");
  return *decode_pieces[id];
}

bool TokenizerImpl::skipped_as_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < special_ids.size() && special_ids[id];
}

std::optional<int32_t> TokenizerImpl::token_id(std::string_view piece) const {
  if (const auto it = added_ids.find(piece); it != added_ids.end()) return it->second;
  return model.piece_id(piece);
}

void TokenizerImpl::encode(std::string_view text, bool add_bos, bool parse_special, std::vector<int32_t>& ids) const {
  const size_t bad = find_invalid_utf8(text);
  MOXIN_CHECK(bad == std::string_view::npos, "[tokenizer] input text is not valid UTF-8 (byte ", bad, " of ",
              text.size(), " is 0x", std::hex, static_cast<unsigned>(static_cast<unsigned char>(text[bad])),
              "); convert the text to UTF-8 first");
  if (!add_bos || spec.single_template.empty()) {
    encode_text(text, parse_special, ids);
    return;
  }
  for (const TemplateItem& item : spec.single_template) {
    if (item.is_sequence)
      encode_text(text, parse_special, ids);
    else
      ids.insert(ids.end(), item.ids.begin(), item.ids.end());
  }
}

// HF's order: added tokens are found in the raw text, the pieces between them normalized, then
// added tokens found again in the normalized pieces, and what is left pre-tokenized and run
// through the BPE model. Empty pieces vanish at every stage.
void TokenizerImpl::encode_text(std::string_view text, bool parse_special, std::vector<int32_t>& ids) const {
  std::vector<std::string> words;
  for (const TextSplit& raw : added.split(text, /*normalized=*/false, parse_special)) {
    if (raw.id >= 0) {
      ids.push_back(raw.id);
      continue;
    }
    if (raw.begin >= raw.end) continue;
    const std::string normalized = normalize(text.substr(raw.begin, raw.end - raw.begin), spec.normalizer);
    if (normalized.empty()) continue;
    for (const TextSplit& part : added.split(normalized, /*normalized=*/true, parse_special)) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      if (part.begin >= part.end) continue;
      const std::string_view piece = std::string_view(normalized).substr(part.begin, part.end - part.begin);
      if (!spec.pre_tokenizer) {
        model.tokenize(piece, ids);
        continue;
      }
      words.clear();
      const bool starts_text = raw.begin == 0 && part.begin == 0;
      metaspace_pre_tokenize(piece, *spec.pre_tokenizer, starts_text, words);
      for (const std::string& word : words) model.tokenize(word, ids);
    }
  }
}

}  // namespace text

namespace {

std::string read_file(const std::string& path) {
  std::error_code ec;
  MOXIN_CHECK(std::filesystem::exists(path, ec), "[tokenizer] ", path,
              ": file not found (pass the checkpoint's tokenizer.json)");
  MOXIN_CHECK(!std::filesystem::is_directory(path, ec), "[tokenizer] ", path,
              ": is a directory; pass the tokenizer.json file inside it");
  std::ifstream in(path, std::ios::binary);
  MOXIN_CHECK(in.good(), "[tokenizer] ", path, ": cannot open for reading");
  std::ostringstream text;
  text << in.rdbuf();
  MOXIN_CHECK(!in.bad(), "[tokenizer] ", path, ": read error");
  return text.str();
}

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const text::TokenizerImpl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_file(const std::string& path) { return from_json(read_file(path), path); }

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& origin) {
  return Tokenizer(std::make_shared<const text::TokenizerImpl>(text::parse_tokenizer_json(json_text, origin), origin));
}

std::vector<int32_t> Tokenizer::encode(std::string_view text, bool add_bos, bool parse_special) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  impl_->encode(text, add_bos, parse_special, ids);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::vector<std::string> pieces;
  pieces.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string& piece = impl_->decode_piece(id);
    if (!(skip_special && impl_->skipped_as_special(id))) pieces.push_back(piece);
  }
  return text::decode_pieces(std::move(pieces), impl_->spec.decoder, impl_->spec.has_decoder);
}

int32_t Tokenizer::bos_id() const {
  const auto& tmpl = impl_->spec.single_template;
  if (!tmpl.empty() && !tmpl.front().is_sequence && !tmpl.front().ids.empty()) {
    return static_cast<int32_t>(tmpl.front().ids.front());
  }
  const auto id = token_id("<s>");
  MOXIN_CHECK(id.has_value(), "[tokenizer] ", impl_->origin,
              ": no BOS token (the post_processor template does not start with one and there is no \"<s>\")");
  return *id;
}

int32_t Tokenizer::eos_id() const {
  const auto id = token_id("</s>");
  MOXIN_CHECK(id.has_value(), "[tokenizer] ", impl_->origin, ": no EOS token \"</s>\" in the vocabulary");
  return *id;
}

int32_t Tokenizer::unk_id() const {
  const auto id = impl_->model.unk_id();
  MOXIN_CHECK(id.has_value(), "[tokenizer] ", impl_->origin, ": the BPE model has no unk_token");
  return *id;
}

size_t Tokenizer::vocab_size() const { return impl_->vocab_size; }

std::optional<int32_t> Tokenizer::token_id(std::string_view piece) const { return impl_->token_id(piece); }

bool Tokenizer::is_special(int32_t id) const { return impl_->skipped_as_special(id); }

StreamDecoder::StreamDecoder(const Tokenizer& tokenizer, bool skip_special)
    : impl_(tokenizer.impl_),
      stream_(std::make_unique<text::DecoderStream>(impl_->spec.decoder, impl_->spec.has_decoder)),
      skip_special_(skip_special) {}

StreamDecoder::~StreamDecoder() = default;
StreamDecoder::StreamDecoder(StreamDecoder&&) noexcept = default;
StreamDecoder& StreamDecoder::operator=(StreamDecoder&&) noexcept = default;

std::string StreamDecoder::push(int32_t id) {
  const std::string& piece = impl_->decode_piece(id);
  if (skip_special_ && impl_->skipped_as_special(id)) return {};
  return stream_->push(piece);
}

std::string StreamDecoder::flush() { return stream_->flush(); }

}  // namespace moxin
