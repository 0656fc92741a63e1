// `moxin tokenize`: text -> ids and ids -> text with a model's tokenizer.json, for one input or
// a batch of JSON lines (so tests and tools can run a whole corpus in one process).
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/command.hpp"
#include "cli/progress_bar.hpp"
#include "hub/resolve_model.hpp"
#include "core/check.hpp"
#include "core/token_id.hpp"
#include "io/json_strict.hpp"
#include "text/tokenizer.hpp"

namespace moxin::cli {
namespace {

struct TokenizeArgs {
  std::string tokenizer_file;
  std::string model_dir;
  std::string text;
  std::string decode;
  std::string jsonl_in;
  bool no_bos = false;
  bool parse_special = false;
  bool keep_special = false;
  bool stream = false;
  CLI::Option* text_option = nullptr;  // --text "" is a valid input, so track presence
};

std::string ids_json(const std::vector<int32_t>& ids) {
  std::string out = "[";
  for (size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) out += ',';
    out += std::to_string(ids[i]);
  }
  return out + "]";
}

std::vector<int32_t> parse_ids(const nlohmann::json& value, const std::string& where) {
  MOXIN_CHECK(value.is_array(), "[tokenize] ", where, ": ids must be a JSON array of integers, got ",
              describe_json(value));
  std::vector<int32_t> ids;
  ids.reserve(value.size());
  for (const auto& id : value) {
    MOXIN_CHECK(id.is_number_integer() && id.get<int64_t>() >= 0 && id.get<int64_t>() <= kMaxTokenId, "[tokenize] ",
                where, ": id ", describe_json(id), " is not a token id (an integer in [0, ", kMaxTokenId, "])");
    ids.push_back(id.get<int32_t>());
  }
  return ids;
}

// An input line is a string or a flat array of ids: two levels of nesting are plenty, and the
// bound keeps a line of 200,000 '[' from reaching code that recurses over the value.
nlohmann::json parse_json(const std::string& text, const std::string& where) {
  return parse_json_bounded(text, cat("[tokenize] ", where), 2);
}

std::string decode_ids(const Tokenizer& tokenizer, const std::vector<int32_t>& ids, const TokenizeArgs& a) {
  if (!a.stream) return tokenizer.decode(ids, !a.keep_special);
  StreamDecoder stream(tokenizer, !a.keep_special);
  std::string text;
  for (int32_t id : ids) text += stream.push(id);
  return text + stream.flush();
}

// Each line is a JSON string (printed back as its ids) or a JSON array of ids (printed back as
// the decoded text, a JSON string).
void run_jsonl(const Tokenizer& tokenizer, const TokenizeArgs& a, std::string& out) {
  std::ifstream file;
  if (a.jsonl_in != "-") {
    file.open(a.jsonl_in, std::ios::binary);
    MOXIN_CHECK(file.good(), "[tokenize] cannot open --jsonl-in file ", a.jsonl_in);
  }
  std::istream& in = a.jsonl_in == "-" ? std::cin : file;
  std::string line;
  for (size_t number = 1; std::getline(in, line); ++number) {
    const std::string where = cat(a.jsonl_in, " line ", number);
    const nlohmann::json value = parse_json(line, where);
    if (value.is_string()) {
      out += ids_json(tokenizer.encode(value.get<std::string>(), !a.no_bos, a.parse_special));
    } else {
      out += nlohmann::json(decode_ids(tokenizer, parse_ids(value, where), a)).dump();
    }
    out += '\n';
  }
  MOXIN_CHECK(!in.bad(), "[tokenize] read error in ", a.jsonl_in);
}

void run(const TokenizeArgs& a) {
  MOXIN_CHECK(a.tokenizer_file.empty() != a.model_dir.empty(),
              "[tokenize] give exactly one of --tokenizer FILE or --model DIR");
  const int modes = int(a.text_option->count() > 0) + int(!a.decode.empty()) + int(!a.jsonl_in.empty());
  MOXIN_CHECK(modes == 1, "[tokenize] give exactly one of --text, --decode or --jsonl-in");
  const std::string path = a.tokenizer_file.empty()
                               ? hub::resolve_model_dir(a.model_dir, stderr_progress(false), hub::ModelFiles::TokenizerOnly) +
                                     "/tokenizer.json"
                               : a.tokenizer_file;
  const Tokenizer tokenizer = Tokenizer::from_file(path);

  std::string out;
  if (!a.jsonl_in.empty()) {
    run_jsonl(tokenizer, a, out);
  } else if (!a.decode.empty()) {
    out = decode_ids(tokenizer, parse_ids(parse_json(a.decode, "--decode"), "--decode"), a) + "\n";
  } else {
    out = ids_json(tokenizer.encode(a.text, !a.no_bos, a.parse_special)) + "\n";
  }
  MOXIN_CHECK(std::fwrite(out.data(), 1, out.size(), stdout) == out.size() && std::fflush(stdout) == 0,
              "[tokenize] cannot write the output");
}

const Command kTokenize("tokenize", [](CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  CLI::App* c = app.add_subcommand("tokenize", "Text to token ids (JSON array) or ids to text, with a tokenizer.json");
  auto* file = c->add_option("--tokenizer", args->tokenizer_file, "tokenizer.json file");
  c->add_option("--model", args->model_dir, "Model folder holding tokenizer.json, or a Hugging Face id ORG/NAME[@REVISION]")
      ->excludes(file);
  args->text_option = c->add_option("--text", args->text, "Text to encode; prints the ids as a JSON array");
  c->add_option("--decode", args->decode, "JSON array of ids to decode, e.g. \"[1,22557]\"; prints the text");
  c->add_option("--jsonl-in", args->jsonl_in,
                "File ('-' for stdin) of JSON lines: a string is encoded (one JSON array per line), "
                "an array of ids is decoded (one JSON string per line)");
  c->add_flag("--no-bos", args->no_bos, "Do not add the BOS token (the template's special tokens)");
  c->add_flag("--parse-special", args->parse_special, "Turn <s>, </s>, <PAD>... written in the text into their ids");
  c->add_flag("--keep-special", args->keep_special, "Decode special tokens too instead of skipping them");
  c->add_flag("--stream", args->stream, "Decode through the streaming detokenizer (same text, id by id)");
  c->callback([args] { run(*args); });
});

}  // namespace
}  // namespace moxin::cli
