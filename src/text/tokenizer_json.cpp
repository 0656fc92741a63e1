// tokenizer.json -> TokenizerSpec. Accepts the Llama/Mistral family of files (BPE with byte
// fallback, legacy Prepend/Replace normalizer or Metaspace pre-tokenizer) and fails with a
// named reason on every component it could not reproduce id-for-id.
#include <nlohmann/json.hpp>

#include "core/check.hpp"
#include "core/token_id.hpp"
#include "io/json_strict.hpp"
#include "text/tokenizer_spec.hpp"
#include "text/utf8.hpp"

namespace moxin::text {
namespace {

using nlohmann::json;

// Carries the file name so every message says which file and which component is at fault.
struct Reader {
  const std::string& origin;

  [[noreturn]] void error(const std::string& where, const std::string& what) const {
    fail("[tokenizer] ", origin, ": ", where, ": ", what);
  }

  const json& field(const json& obj, const char* key, const std::string& where) const {
    if (!obj.is_object()) error(where, "expected a JSON object");
    auto it = obj.find(key);
    if (it == obj.end()) error(where, cat("missing field \"", key, "\""));
    return *it;
  }

  std::string string_field(const json& obj, const char* key, const std::string& where) const {
    const json& v = field(obj, key, where);
    if (!v.is_string()) error(where, cat("field \"", key, "\" must be a string"));
    return v.get<std::string>();
  }

  bool bool_field(const json& obj, const char* key, const std::string& where) const {
    const json& v = field(obj, key, where);
    if (!v.is_boolean()) error(where, cat("field \"", key, "\" must be true or false"));
    return v.get<bool>();
  }

  bool optional_bool(const json& obj, const char* key, bool fallback, const std::string& where) const {
    auto it = obj.find(key);
    if (it == obj.end() || it->is_null()) return fallback;
    if (!it->is_boolean()) error(where, cat("field \"", key, "\" must be true or false"));
    return it->get<bool>();
  }

  int64_t id_value(const json& v, const std::string& where) const {
    if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxTokenId) {
      error(where, cat("token id ", describe_json(v), " is not an integer in [0, ", kMaxTokenId, "]"));
    }
    return v.get<int64_t>();
  }

  std::string single_char(const json& obj, const char* key, const std::string& where) const {
    std::string c = string_field(obj, key, where);
    if (!is_single_code_point(c)) error(where, cat("field \"", key, "\" must be one character"));
    return c;
  }

  std::string type_of(const json& obj, const std::string& where) const { return string_field(obj, "type", where); }

  // Flattens nested {"type": "Sequence", <list_key>: [...]} into the list of leaf components.
  void flatten(const json& node, const char* list_key, const std::string& where, std::vector<const json*>& out) const {
    if (node.is_null()) return;
    if (type_of(node, where) == "Sequence") {
      const json& list = field(node, list_key, where);
      if (!list.is_array()) error(where, cat("\"", list_key, "\" must be an array"));
      for (const json& child : list) flatten(child, list_key, where, out);
    } else {
      out.push_back(&node);
    }
  }

  std::string replace_pattern(const json& obj, const std::string& where) const {
    const json& pattern = field(obj, "pattern", where);
    if (pattern.is_object() && pattern.contains("Regex")) {
      error(where, "Replace with a Regex pattern is not supported (only {\"String\": ...})");
    }
    std::string literal = string_field(pattern, "String", where);
    if (literal.empty()) error(where, "Replace pattern must not be empty");
    return literal;
  }

  MetaspaceSpec metaspace(const json& obj, const std::string& where) const {
    MetaspaceSpec m;
    m.replacement = single_char(obj, "replacement", where);
    // As HF: prepend_scheme defaults to "always"; the old add_prefix_space=false means "never"
    // and contradicts any other declared scheme.
    if (auto it = obj.find("prepend_scheme"); it != obj.end() && !it->is_null()) {
      const std::string scheme = it->is_string() ? it->get<std::string>() : "";
      if (scheme == "always")
        m.prepend_scheme = PrependScheme::Always;
      else if (scheme == "first")
        m.prepend_scheme = PrependScheme::First;
      else if (scheme == "never")
        m.prepend_scheme = PrependScheme::Never;
      else
        error(where, cat("unknown prepend_scheme ", describe_json(*it), " (always, first or never)"));
    }
    if (!optional_bool(obj, "add_prefix_space", true, where)) {
      if (m.prepend_scheme != PrependScheme::Never) {
        error(where, "add_prefix_space=false contradicts the declared prepend_scheme");
      }
    }
    m.split = optional_bool(obj, "split", true, where);
    return m;
  }

  std::vector<NormalizerStep> normalizer(const json& root) const {
    std::vector<const json*> leaves;
    if (auto it = root.find("normalizer"); it != root.end()) flatten(*it, "normalizers", "normalizer", leaves);
    std::vector<NormalizerStep> steps;
    for (const json* n : leaves) {
      const std::string type = type_of(*n, "normalizer");
      if (type == "Prepend") {
        steps.push_back({NormalizerStep::Kind::Prepend, "", string_field(*n, "prepend", "normalizer Prepend")});
      } else if (type == "Replace") {
        steps.push_back({NormalizerStep::Kind::Replace, replace_pattern(*n, "normalizer Replace"),
                         string_field(*n, "content", "normalizer Replace")});
      } else {
        error("normalizer", cat("type \"", type, "\" is not supported (supported: Sequence, Prepend, Replace)"));
      }
    }
    return steps;
  }

  std::optional<MetaspaceSpec> pre_tokenizer(const json& root) const {
    std::vector<const json*> leaves;
    if (auto it = root.find("pre_tokenizer"); it != root.end()) flatten(*it, "pretokenizers", "pre_tokenizer", leaves);
    if (leaves.empty()) return std::nullopt;
    if (leaves.size() > 1 || type_of(*leaves[0], "pre_tokenizer") != "Metaspace") {
      error("pre_tokenizer", "only a single Metaspace pre-tokenizer (or none) is supported");
    }
    return metaspace(*leaves[0], "pre_tokenizer Metaspace");
  }

  BpeSpec model(const json& root) const {
    const json& m = field(root, "model", "top level");
    const std::string where = "model";
    if (!m.is_object()) error(where, "expected a JSON object");
    if (auto it = m.find("type"); it != m.end() && (!it->is_string() || it->get<std::string>() != "BPE")) {
      error(where, cat("type ", describe_json(*it), " is not supported (only BPE)"));
    }
    if (auto it = m.find("dropout");
        it != m.end() && !it->is_null() && !(it->is_number() && it->get<double>() == 0.0)) {
      error(where, "BPE dropout is random and not supported; set \"dropout\" to null");
    }
    for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (auto it = m.find(key); it != m.end() && !it->is_null() && *it != "") {
        error(where, cat("\"", key, "\" is not supported (must be null)"));
      }
    }
    BpeSpec bpe;
    bpe.byte_fallback = optional_bool(m, "byte_fallback", false, where);
    bpe.fuse_unk = optional_bool(m, "fuse_unk", false, where);
    bpe.ignore_merges = optional_bool(m, "ignore_merges", false, where);
    if (auto it = m.find("unk_token"); it != m.end() && !it->is_null()) {
      bpe.unk_token = string_field(m, "unk_token", where);
    }
    const json& vocab = field(m, "vocab", where);
    if (!vocab.is_object()) error(where, "\"vocab\" must be an object of piece -> id");
    bpe.vocab.reserve(vocab.size());
    for (const auto& [piece, id] : vocab.items()) {
      bpe.vocab.emplace_back(piece, id_value(id, cat("model vocab piece \"", piece, "\"")));
    }
    const json& merges = field(m, "merges", where);
    if (!merges.is_array()) error(where, "\"merges\" must be an array");
    bpe.merges.reserve(merges.size());
    for (const json& merge : merges) {
      if (merge.is_string()) {
        // The legacy "a b" form, as in merges.txt: comment lines are skipped and do not count
        // towards the rank.
        const std::string line = merge.get<std::string>();
        if (line.rfind("#version", 0) == 0) continue;
        const size_t space = line.find(' ');
        if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
          error(where,
                cat("merge ", bpe.merges.size() + 1, " \"", line, "\" is not two pieces separated by one space"));
        }
        bpe.merges.emplace_back(line.substr(0, space), line.substr(space + 1));
      } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
        bpe.merges.emplace_back(merge[0].get<std::string>(), merge[1].get<std::string>());
      } else {
        error(where, cat("merge ", bpe.merges.size() + 1, " must be \"a b\" or [\"a\", \"b\"], got ", describe_json(merge)));
      }
    }
    return bpe;
  }

  std::vector<AddedTokenSpec> added_tokens(const json& root) const {
    std::vector<AddedTokenSpec> tokens;
    auto it = root.find("added_tokens");
    if (it == root.end() || it->is_null()) return tokens;
    if (!it->is_array()) error("added_tokens", "must be an array");
    for (const json& t : *it) {
      const std::string where =
          cat("added token ", t.is_object() && t.contains("content") ? describe_json(t["content"]) : describe_json(t));
      AddedTokenSpec spec;
      spec.content = string_field(t, "content", where);
      spec.declared_id = id_value(field(t, "id", where), where);
      spec.lstrip = bool_field(t, "lstrip", where);
      spec.rstrip = bool_field(t, "rstrip", where);
      spec.normalized = bool_field(t, "normalized", where);
      spec.special = bool_field(t, "special", where);
      if (bool_field(t, "single_word", where)) {
        error(where, "single_word=true is not supported (it needs Unicode word-character tables)");
      }
      tokens.push_back(std::move(spec));
    }
    return tokens;
  }

  void decoder(const json& root, TokenizerSpec& spec) const {
    auto it = root.find("decoder");
    spec.has_decoder = it != root.end() && !it->is_null();
    if (!spec.has_decoder) return;
    std::vector<const json*> leaves;
    flatten(*it, "decoders", "decoder", leaves);
    for (const json* d : leaves) {
      const std::string type = type_of(*d, "decoder");
      DecoderStep step{};
      if (type == "Replace") {
        step.kind = DecoderStep::Kind::Replace;
        step.pattern = replace_pattern(*d, "decoder Replace");
        step.content = string_field(*d, "content", "decoder Replace");
      } else if (type == "ByteFallback") {
        step.kind = DecoderStep::Kind::ByteFallback;
      } else if (type == "Fuse") {
        step.kind = DecoderStep::Kind::Fuse;
      } else if (type == "Strip") {
        step.kind = DecoderStep::Kind::Strip;
        step.pattern = single_char(*d, "content", "decoder Strip");
        const json& start = field(*d, "start", "decoder Strip");
        const json& stop = field(*d, "stop", "decoder Strip");
        if (!start.is_number_unsigned() || !stop.is_number_unsigned()) {
          error("decoder Strip", "start and stop must be non-negative integers");
        }
        step.strip_start = start.get<size_t>();
        step.strip_stop = stop.get<size_t>();
      } else if (type == "Metaspace") {
        step.kind = DecoderStep::Kind::Metaspace;
        step.metaspace = metaspace(*d, "decoder Metaspace");
      } else {
        error("decoder",
              cat("type \"", type,
                  "\" is not supported (supported: Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace)"));
      }
      spec.decoder.push_back(std::move(step));
    }
  }

  std::vector<TemplateItem> single_template(const json& root) const {
    std::vector<const json*> leaves;
    if (auto it = root.find("post_processor"); it != root.end()) flatten(*it, "processors", "post_processor", leaves);
    if (leaves.empty()) return {};
    if (leaves.size() > 1 || type_of(*leaves[0], "post_processor") != "TemplateProcessing") {
      error("post_processor", "only a single TemplateProcessing post-processor (or none) is supported");
    }
    const json& tp = *leaves[0];
    const std::string where = "post_processor TemplateProcessing";
    const json& single = field(tp, "single", where);
    if (!single.is_array()) error(where, "\"single\" must be an array");
    const json& specials = field(tp, "special_tokens", where);
    std::vector<TemplateItem> items;
    for (const json& piece : single) {
      if (piece.is_object() && piece.contains("Sequence")) {
        const std::string seq = string_field(piece["Sequence"], "id", where);
        if (seq != "A") error(where, cat("the single template may only use sequence A, not ", seq));
        items.push_back({true, {}});
      } else if (piece.is_object() && piece.contains("SpecialToken")) {
        const std::string name = string_field(piece["SpecialToken"], "id", where);
        if (!specials.is_object() || !specials.contains(name)) {
          error(where, cat("special token \"", name, "\" is used by the template but missing from special_tokens"));
        }
        const json& ids = field(specials[name], "ids", where);
        if (!ids.is_array()) error(where, cat("special_tokens \"", name, "\".ids must be an array"));
        TemplateItem item;
        for (const json& id : ids) item.ids.push_back(id_value(id, where));
        items.push_back(std::move(item));
      } else {
        error(where, cat("unknown template item ", describe_json(piece)));
      }
    }
    return items;
  }
};

}  // namespace

TokenizerSpec parse_tokenizer_json(const std::string& json_text, const std::string& origin) {
  // Real tokenizer.json files nest about 5 levels (a Sequence of normalizers); 64 leaves room.
  const json root = parse_json_bounded(json_text, cat("[tokenizer] ", origin), 64);
  const Reader reader{origin};
  if (!root.is_object()) reader.error("top level", "expected a JSON object");
  try {
    if (auto it = root.find("version"); it != root.end() && *it != "1.0") {
      reader.error("version", cat(describe_json(*it), " is not supported (expected \"1.0\")"));
    }
    // "truncation" and "padding" shape batches for training; single-sequence inference ignores them.
    TokenizerSpec spec;
    spec.added_tokens = reader.added_tokens(root);
    spec.normalizer = reader.normalizer(root);
    spec.pre_tokenizer = reader.pre_tokenizer(root);
    spec.model = reader.model(root);
    reader.decoder(root, spec);
    spec.single_template = reader.single_template(root);
    return spec;
  } catch (const json::exception& e) {
    fail("[tokenizer] ", origin, ": unexpected JSON structure: ", e.what());
  }
}

}  // namespace moxin::text
