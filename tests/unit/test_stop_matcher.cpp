// StopMatcher on random texts, random stop sets and random piece splits (including splits inside
// UTF-8 characters), against a plain std::string::find reference over the whole text.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "moxin/error.hpp"
#include "runtime/stop_matcher.hpp"
#include "test_sampler_seed.hpp"

namespace moxin {
namespace {

using sampler_test::printed_seed;

struct Expected {
  std::string output;
  bool matched = false;
};

// What a streaming consumer may see: the text before the first stop string to complete (the
// longest if several complete at the same byte); all of the text when none occurs. For one stop,
// its first occurrence is also the first to complete.
Expected reference(const std::string& text, const std::vector<std::string>& stops) {
  size_t best_start = std::string::npos, best_end = std::string::npos;
  for (const std::string& stop : stops) {
    const size_t start = text.find(stop);
    if (start == std::string::npos) continue;
    const size_t end = start + stop.size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_start = start;
      best_end = end;
    }
  }
  if (best_start == std::string::npos) return {text, false};
  return {text.substr(0, best_start), true};
}

bool is_continuation_byte(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// A small alphabet of 1- to 4-byte characters so that stops occur often and overlap.
const std::vector<std::string> kAlphabet = {
    "a", "b", "c", " ", "\xC3\xA9" /* é */, "\xE2\x82\xAC" /* € */, "\xF0\x9D\x84\x9E" /* 𝄞 */};

std::string random_text(std::mt19937_64& rng, size_t max_chars) {
  std::uniform_int_distribution<size_t> length(0, max_chars), pick(0, kAlphabet.size() - 1);
  std::string text;
  for (size_t n = length(rng); n > 0; --n) text += kAlphabet[pick(rng)];
  return text;
}

std::vector<std::string> random_stops(std::mt19937_64& rng, const std::string& text) {
  std::uniform_int_distribution<size_t> count(1, 4);
  std::vector<std::string> stops;
  for (size_t n = count(rng); n > 0; --n) {
    std::string stop = random_text(rng, 4);
    // Half the time a piece of the text itself (cut at character boundaries), so it occurs.
    if (!text.empty() && rng() % 2 == 0) {
      std::uniform_int_distribution<size_t> at(0, text.size() - 1), len(1, 12);
      size_t start = at(rng), end = std::min(text.size(), start + len(rng));
      while (start > 0 && is_continuation_byte(text[start])) --start;
      while (end < text.size() && is_continuation_byte(text[end])) ++end;
      stop = text.substr(start, end - start);
    }
    if (!stop.empty()) stops.push_back(stop);
  }
  return stops;
}

// Cuts `text` into pieces at random byte offsets (so sometimes inside a character).
std::vector<std::string> random_split(std::mt19937_64& rng, const std::string& text) {
  std::vector<std::string> pieces;
  std::uniform_int_distribution<size_t> length(0, 6);
  for (size_t at = 0; at < text.size();) {
    const size_t n = std::min(text.size() - at, length(rng));
    pieces.push_back(text.substr(at, n));  // empty pieces too: a token may decode to nothing
    at += n;
  }
  return pieces;
}

TEST(StopMatcher, AnySplitYieldsTheTextBeforeTheFirstCompletedStop) {
  std::mt19937_64 rng(printed_seed());
  for (int round = 0; round < 3000; ++round) {
    const std::string text = random_text(rng, 30);
    const std::vector<std::string> stops = random_stops(rng, text);
    const Expected expected = reference(text, stops);
    for (int split = 0; split < 8; ++split) {
      const std::vector<std::string> pieces = random_split(rng, text);
      StopMatcher matcher(stops);
      std::string output;
      for (const std::string& piece : pieces) {
        const std::string released = matcher.push(piece);
        output += released;
        // Released text always ends on a character boundary of the original text.
        ASSERT_TRUE(output.size() == text.size() || !is_continuation_byte(text[output.size()]))
            << "split a character after " << output.size() << " bytes of '" << text << "'";
      }
      output += matcher.flush();
      std::string trace = "text '" + text + "' stops:";
      for (const std::string& s : stops) trace += " '" + s + "'";
      trace += " pieces:";
      for (const std::string& p : pieces) trace += " '" + p + "'";
      ASSERT_EQ(output, expected.output) << trace;
      ASSERT_EQ(matcher.matched(), expected.matched) << trace;
    }
  }
}

TEST(StopMatcher, HoldsOverlappingCandidatesUntilResolved) {
  StopMatcher matcher({"abc", "bd"});
  EXPECT_EQ(matcher.push("xa"), "x");
  EXPECT_EQ(matcher.push("b"), "");  // "ab" may still become "abc", and "b" may become "bd"
  EXPECT_EQ(matcher.push("d"), "a");
  EXPECT_TRUE(matcher.matched());
  EXPECT_EQ(matcher.push("more"), "");
  EXPECT_EQ(matcher.flush(), "");

  StopMatcher resolved({"abc", "bd"});
  EXPECT_EQ(resolved.push("ab"), "");
  EXPECT_EQ(resolved.push("x"), "abx");
  EXPECT_FALSE(resolved.matched());
}

TEST(StopMatcher, TheFirstStopToCompleteWins) {
  // Streaming cannot wait for "abcd" once "bc" has completed: generation stops there.
  StopMatcher matcher({"abcd", "bc"});
  EXPECT_EQ(matcher.push("abcd"), "a");
  EXPECT_TRUE(matcher.matched());
}

TEST(StopMatcher, NeverReleasesHalfACharacter) {
  StopMatcher matcher({});
  // U+20AC (euro sign) is E2 82 AC.
  EXPECT_EQ(matcher.push("a\xE2"), "a");
  EXPECT_EQ(matcher.push("\x82"), "");
  EXPECT_EQ(matcher.push("\xAC" "b"), "\xE2\x82\xAC" "b");
  EXPECT_EQ(matcher.push("\xE2\x82"), "");
  EXPECT_EQ(matcher.flush(), "\xE2\x82");  // the end of generation releases what is left
}

TEST(StopMatcher, RefusesEmptyStopStrings) {
  try {
    StopMatcher matcher({"</s>", ""});
    FAIL() << "an empty stop string was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("[stop] stop string #1 is empty"), std::string::npos)
        << e.what();
  }
}

}  // namespace
}  // namespace moxin
