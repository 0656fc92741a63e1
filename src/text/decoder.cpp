#include "text/decoder.hpp"

#include "text/text_pipeline.hpp"
#include "text/utf8.hpp"

namespace moxin::text {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

std::optional<unsigned> hex_digit(char c) {
  if (c >= '0' && c <= '9') return unsigned(c - '0');
  if (c >= 'a' && c <= 'f') return unsigned(c - 'a' + 10);
  if (c >= 'A' && c <= 'F') return unsigned(c - 'A' + 10);
  return std::nullopt;
}

std::string join(const std::vector<std::string>& pieces, std::string_view separator) {
  std::string out;
  for (size_t i = 0; i < pieces.size(); ++i) {
    if (i > 0) out.append(separator);
    out.append(pieces[i]);
  }
  return out;
}

}  // namespace

std::optional<unsigned char> byte_fallback_value(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return std::nullopt;
  // HF parses the two characters with Rust's u8::from_str_radix, which also takes "+H".
  const auto high = hex_digit(piece[3]);
  const auto low = hex_digit(piece[4]);
  if (piece[3] == '+' && low) return static_cast<unsigned char>(*low);
  if (!high || !low) return std::nullopt;
  return static_cast<unsigned char>(*high * 16 + *low);
}

void append_byte_run(const std::string& bytes, std::vector<std::string>& out) {
  if (bytes.empty()) return;
  if (find_invalid_utf8(bytes) == std::string::npos) {
    out.push_back(bytes);
  } else {
    for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back(kReplacementChar);
  }
}

std::string strip_piece(std::string_view piece, std::string_view c, size_t start, size_t stop) {
  std::vector<std::string_view> chars;
  for (size_t pos = 0; pos < piece.size();) {
    const size_t len = utf8_length(static_cast<unsigned char>(piece[pos]));
    chars.push_back(piece.substr(pos, len));
    pos += len;
  }
  size_t start_cut = 0;
  while (start_cut < start && start_cut < chars.size() && chars[start_cut] == c) ++start_cut;
  size_t stop_cut = chars.size();
  for (size_t i = 0; i < stop && stop_cut > 0 && chars[stop_cut - 1] == c; ++i) --stop_cut;
  std::string out;
  for (size_t i = start_cut; i < stop_cut; ++i) out.append(chars[i]);  // empty when the cuts cross
  return out;
}

std::string metaspace_piece(std::string_view piece, const MetaspaceSpec& spec, bool first) {
  // The first piece loses every replacement character (HF's Metaspace decoder), unless nothing
  // was ever prepended.
  const bool drop = first && spec.prepend_scheme != PrependScheme::Never;
  return replace_all(piece, spec.replacement, drop ? "" : " ");
}

std::string decode_pieces(std::vector<std::string> pieces, const std::vector<DecoderStep>& steps, bool has_decoder) {
  if (!has_decoder) return join(pieces, " ");
  for (const DecoderStep& step : steps) {
    switch (step.kind) {
      case DecoderStep::Kind::Replace:
        for (auto& p : pieces) p = replace_all(p, step.pattern, step.content);
        break;
      case DecoderStep::Kind::ByteFallback: {
        std::vector<std::string> out;
        std::string run;
        for (auto& p : pieces) {
          if (const auto byte = byte_fallback_value(p)) {
            run += static_cast<char>(*byte);
            continue;
          }
          append_byte_run(run, out);
          run.clear();
          out.push_back(std::move(p));
        }
        append_byte_run(run, out);
        pieces = std::move(out);
        break;
      }
      case DecoderStep::Kind::Fuse:
        pieces = {join(pieces, "")};
        break;
      case DecoderStep::Kind::Strip:
        for (auto& p : pieces) p = strip_piece(p, step.pattern, step.strip_start, step.strip_stop);
        break;
      case DecoderStep::Kind::Metaspace:
        for (size_t i = 0; i < pieces.size(); ++i) pieces[i] = metaspace_piece(pieces[i], step.metaspace, i == 0);
        break;
    }
  }
  return join(pieces, "");
}

}  // namespace moxin::text
