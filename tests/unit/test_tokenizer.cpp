// Tokenizer unit tests: values produced by Hugging Face `tokenizers` 0.23 on the real
// moxin-vlm tokenizer.json, the streaming decoder against decode() on random id sequences,
// error cases, and encoding speed on long inputs. (The corpus-wide parity with HF is
// tests/py/test_tokenizer.py.)
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "moxin/error.hpp"
#include "text/tokenizer.hpp"

namespace moxin {
namespace {

using Ids = std::vector<int32_t>;

// MOXIN_TOKENIZER_FIXTURE, else the repository's tests/fixtures/tokenizer.
std::string fixture_path() {
  if (const char* env = std::getenv("MOXIN_TOKENIZER_FIXTURE")) return env;
  const auto tests = std::filesystem::path(__FILE__).parent_path().parent_path();
  return (tests / "fixtures" / "tokenizer" / "moxin-vlm.tokenizer.json").string();
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

uint32_t test_seed() {
  const char* env = std::getenv("MOXIN_TEST_SEED");
  const uint32_t seed = env ? static_cast<uint32_t>(std::strtoul(env, nullptr, 10)) : std::random_device{}();
  std::cout << "[seed] " << ::testing::UnitTest::GetInstance()->current_test_info()->name()
            << ": MOXIN_TEST_SEED=" << seed << "\n";
  return seed;
}

class TokenizerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fixture_path();
    if (!std::filesystem::exists(path_)) GTEST_SKIP() << "tokenizer fixture not found at " << path_;
  }
  Tokenizer load() const { return Tokenizer::from_file(path_); }
  Tokenizer load_modified(const std::function<void(nlohmann::json&)>& change) const {
    static const nlohmann::json fixture = nlohmann::json::parse(read_text(path_));
    nlohmann::json j = fixture;
    change(j);
    return Tokenizer::from_json(j.dump(), "modified.tokenizer.json");
  }
  std::string path_;
};

// Expects moxin::Error whose message starts with "[tokenizer]" and contains `fragment`.
template <typename F>
void expect_tokenizer_error(F&& f, const std::string& fragment) {
  try {
    f();
    ADD_FAILURE() << "expected moxin::Error containing \"" << fragment << "\"";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("[tokenizer]", 0), 0u) << msg;
    EXPECT_NE(msg.find(fragment), std::string::npos) << "message: " << msg;
  }
}

// Reference ids and texts below were produced by tokenizers.Tokenizer.from_file(fixture).
TEST_F(TokenizerTest, EncodesLikeHuggingFace) {
  const Tokenizer tok = load();
  EXPECT_EQ(tok.encode("Hello world"), (Ids{1, 22557, 1526}));
  EXPECT_EQ(tok.encode(""), (Ids{1}));
  EXPECT_EQ(tok.encode("", false), Ids{});
  EXPECT_EQ(tok.encode(" "), (Ids{1, 259}));
  EXPECT_EQ(tok.encode("  a  "), (Ids{1, 259, 264, 259}));
  EXPECT_EQ(tok.encode("a\n\tb"), (Ids{1, 264, 13, 12, 28726}));
  EXPECT_EQ(tok.encode("日本語 😀👍🏽"), (Ids{1, 28705, 29142, 29119, 30321, 28705, 30575, 30195, 31007}));
  EXPECT_EQ(tok.encode(std::string_view("\0\x01", 2)), (Ids{1, 28705, 3, 29534}));
}

TEST_F(TokenizerTest, SpecialTokensInTextOnlyWithParseSpecial) {
  const Tokenizer tok = load();
  const std::string text = "</s>hi <s> x<PAD>";
  EXPECT_EQ(tok.encode(text, true, false),
            (Ids{1, 1867, 28713, 28767, 5365, 523, 28713, 28767, 1318, 28789, 28753, 1841, 28767}));
  EXPECT_EQ(tok.encode(text, true, true), (Ids{1, 2, 12014, 28705, 1, 28705, 1318, 32000}));
  EXPECT_EQ(tok.encode("<unk>", false, false), (Ids{523, 2060, 28767}));
}

TEST_F(TokenizerTest, VocabularyAccessors) {
  const Tokenizer tok = load();
  EXPECT_EQ(tok.vocab_size(), 32001u);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.unk_id(), 0);
  EXPECT_EQ(tok.token_id("<PAD>"), 32000);
  EXPECT_EQ(tok.token_id("▁Hello"), 22557);
  EXPECT_EQ(tok.token_id("no such piece"), std::nullopt);
  EXPECT_TRUE(tok.is_special(32000));
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(22557));
  EXPECT_FALSE(tok.is_special(-1));
}

TEST_F(TokenizerTest, DecodesLikeHuggingFace) {
  const Tokenizer tok = load();
  EXPECT_EQ(tok.decode(Ids{1, 2, 0, 32000, 22557}), "Hello");
  EXPECT_EQ(tok.decode(Ids{1, 2, 0, 32000, 22557}, false), "<s></s><unk><PAD> Hello");
  EXPECT_EQ(tok.decode(Ids{0xE2 + 3, 0x41 + 3, 50}), "\uFFFD\uFFFD\uFFFD");  // one invalid run
  EXPECT_EQ(tok.decode(Ids{0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3}), "😀");
  EXPECT_EQ(tok.decode(Ids{0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3, 0x80 + 3}), "\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD");
  EXPECT_EQ(tok.decode(Ids{28705}), "");
  EXPECT_EQ(tok.decode(Ids{28705, 28705}), " ");
  EXPECT_EQ(tok.decode(Ids{}), "");
}

// Random id sequences, heavy in byte pieces (ids 3..258) that split multi-byte characters.
std::vector<Ids> random_sequences(std::mt19937& rng, int32_t vocab, int count) {
  std::vector<Ids> out;
  auto pick = [&](int n) { return static_cast<int32_t>(rng() % static_cast<uint32_t>(n)); };
  const Ids interesting = {0, 1, 2, vocab - 1, 28705, 259, 22557, 1526};
  for (int s = 0; s < count; ++s) {
    Ids ids;
    const int len = pick(40);
    for (int i = 0; i < len; ++i) {
      switch (pick(5)) {
        case 0:
          ids.push_back(pick(vocab));
          break;
        case 1:
          ids.push_back(interesting[pick(static_cast<int>(interesting.size()))]);
          break;
        case 2: {  // a multi-byte UTF-8 character as byte pieces, sometimes cut short
          const uint8_t lead = static_cast<uint8_t>(0xC2 + pick(0xF4 - 0xC2 + 1));
          const int extra = lead >= 0xF0 ? 3 : lead >= 0xE0 ? 2 : 1;
          const int keep = pick(4) == 0 ? pick(extra + 1) : extra;
          ids.push_back(3 + lead);
          for (int k = 0; k < keep; ++k) ids.push_back(3 + 0x80 + pick(0x20));
          break;
        }
        default:
          ids.push_back(3 + pick(256));
          break;
      }
    }
    out.push_back(std::move(ids));
  }
  return out;
}

void expect_stream_equals_decode(const Tokenizer& tok, std::mt19937& rng, const std::string& label) {
  for (const Ids& ids : random_sequences(rng, static_cast<int32_t>(tok.vocab_size()), 400)) {
    for (bool skip : {true, false}) {
      StreamDecoder stream(tok, skip);
      std::string text;
      for (int32_t id : ids) text += stream.push(id);
      text += stream.flush();
      const std::string expected = tok.decode(ids, skip);
      if (text != expected) {
        std::ostringstream seq;
        for (int32_t id : ids) seq << id << ',';
        ADD_FAILURE() << label << " skip_special=" << skip << " ids [" << seq.str() << "]\n stream: " << text
                      << "\n decode: " << expected;
        return;
      }
    }
  }
}

TEST_F(TokenizerTest, StreamDecoderEqualsDecode) {
  std::mt19937 rng(test_seed());
  expect_stream_equals_decode(load(), rng, "legacy decoder");
  const nlohmann::json metaspace = {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}};
  const nlohmann::json replace2 = {{"type", "Replace"}, {"pattern", {{"String", "▁▁"}}}, {"content", "="}};
  const nlohmann::json strip = {{"type", "Strip"}, {"content", " "}, {"start", 2}, {"stop", 1}};
  const nlohmann::json byte_fallback = {{"type", "ByteFallback"}}, fuse = {{"type", "Fuse"}};
  const std::vector<std::pair<std::string, nlohmann::json>> decoders = {
      {"Metaspace", metaspace},
      {"ByteFallback+Metaspace", {{"type", "Sequence"}, {"decoders", {byte_fallback, metaspace}}}},
      {"Fuse first", {{"type", "Sequence"}, {"decoders", {fuse, replace2, byte_fallback, metaspace, strip}}}},
      {"Strip before Fuse", {{"type", "Sequence"}, {"decoders", {strip, byte_fallback, fuse, strip}}}},
      {"no decoder", nullptr},
  };
  for (const auto& entry : decoders) {  // not a structured binding: clang 14 cannot capture one
    const nlohmann::json& decoder = entry.second;
    expect_stream_equals_decode(load_modified([&](nlohmann::json& j) { j["decoder"] = decoder; }), rng, entry.first);
  }
}

TEST_F(TokenizerTest, StreamHoldsBackIncompleteBytes) {
  const Tokenizer tok = load();
  StreamDecoder stream(tok);
  EXPECT_EQ(stream.push(22557), "Hello");  // the leading space is stripped
  EXPECT_EQ(stream.push(0xE2 + 3), "");
  EXPECT_EQ(stream.push(0x82 + 3), "");
  EXPECT_EQ(stream.push(0xAC + 3), "");     // the run could still turn invalid
  EXPECT_EQ(stream.push(1526), "€ world");  // a non-byte piece ends it
  EXPECT_EQ(stream.push(0xE2 + 3), "");
  EXPECT_EQ(stream.flush(), "\uFFFD");
}

TEST_F(TokenizerTest, RejectsInvalidUtf8Input) {
  const Tokenizer tok = load();
  for (const std::string bad : {"\x80", "a\xC0\x80", "\xED\xA0\x80", "x\xE2\x82", "\xF5\x80\x80\x80", "\xFF"}) {
    expect_tokenizer_error([&] { tok.encode(bad); }, "not valid UTF-8");
  }
}

TEST_F(TokenizerTest, RejectsUnknownIds) {
  const Tokenizer tok = load();
  expect_tokenizer_error([&] { tok.decode(Ids{1, 32001}); }, "cannot decode id 32001");
  expect_tokenizer_error([&] { tok.decode(Ids{-5}); }, "cannot decode id -5");
  StreamDecoder stream(tok);
  expect_tokenizer_error([&] { stream.push(99999); }, "cannot decode id 99999");
}

TEST_F(TokenizerTest, RejectsBadFiles) {
  expect_tokenizer_error([] { Tokenizer::from_file("/nonexistent/tokenizer.json"); }, "file not found");
  expect_tokenizer_error([] { Tokenizer::from_file(std::filesystem::temp_directory_path().string()); },
                         "is a directory");
  expect_tokenizer_error([] { Tokenizer::from_json("{\"model\": [1, 2", "x.json"); }, "is not valid JSON");
  expect_tokenizer_error([] { Tokenizer::from_json("{}", "x.json"); }, "missing field \"model\"");
  const auto modified = [&](const std::function<void(nlohmann::json&)>& change, const std::string& fragment) {
    expect_tokenizer_error([&] { load_modified(change); }, fragment);
  };
  modified([](auto& j) { j["model"]["merges"].push_back("▁t nosuchpiece"); },
           "\"nosuchpiece\", which is not in the model vocab");
  modified([](auto& j) { j["model"]["merges"].push_back("a b c"); }, "is not two pieces");
  modified([](auto& j) { j["model"]["vocab"]["duplicate"] = 5; }, "gives id 5 to both");
  modified([](auto& j) { j["model"]["vocab"] = 3; }, "\"vocab\" must be an object");
  modified([](auto& j) { j["model"]["dropout"] = 0.1; }, "dropout");
  modified([](auto& j) { j["model"]["unk_token"] = "<nope>"; }, "unk_token \"<nope>\" is not in the model vocab");
  modified([](auto& j) { j["model"]["type"] = "WordPiece"; }, "only BPE");
  modified([](auto& j) { j["normalizer"] = {{"type", "NFKC"}}; }, "\"NFKC\" is not supported");
  modified([](auto& j) { j["pre_tokenizer"] = {{"type", "ByteLevel"}}; }, "Metaspace pre-tokenizer");
  modified([](auto& j) { j["decoder"] = {{"type", "ByteLevel"}}; }, "\"ByteLevel\" is not supported");
  modified([](auto& j) { j["added_tokens"][3]["id"] = 32005; }, "declares id 32005 but gets id 32000");
  modified([](auto& j) { j["added_tokens"][3]["single_word"] = true; }, "single_word");
  modified([](auto& j) { j["added_tokens"][3].erase("normalized"); }, "missing field \"normalized\"");
  modified([](auto& j) { j["post_processor"]["special_tokens"]["<s>"]["ids"] = {40000}; }, "template uses id 40000");
  // Every reader of ids states the same largest id (config.json and the CLI say it too).
  modified([](auto& j) { j["model"]["vocab"]["huge"] = 1 << 24; }, "token id 16777216 is not an integer in [0, 16777215]");
  modified([](auto& j) { j["added_tokens"][3]["id"] = int64_t{1} << 31; }, "not an integer in [0, 16777215]");
  // A deeply nested value is refused by the parser, before anything recurses over it.
  expect_tokenizer_error([] { Tokenizer::from_json("{\"version\": " + std::string(100000, '[') + "}", "x.json"); },
                         "nests deeper than 64 levels");
}

// Long inputs round-trip (their speed is bench/tokenizer_bench.cpp's job).
TEST_F(TokenizerTest, LongInputsRoundTrip) {
  const Tokenizer tok = load();
  std::mt19937 rng(test_seed());
  const std::vector<std::string> alphabet = {"a", "b", "the ", " ", "\n", "é", "日", "本", "😀", "ع", "q", "z", "  "};
  std::string mixed;
  while (mixed.size() < 200000) mixed += alphabet[rng() % alphabet.size()];
  for (const std::string& text : {mixed, std::string(100000, 'a'), std::string(100000, ' ')}) {
    const Ids ids = tok.encode(text);
    EXPECT_FALSE(ids.empty());
    EXPECT_EQ(tok.decode(ids), text);
  }
}

}  // namespace
}  // namespace moxin
