#include "text/text_pipeline.hpp"

namespace moxin::text {

std::string replace_all(std::string_view s, std::string_view pattern, std::string_view content) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit = s.find(pattern); hit != std::string_view::npos; hit = s.find(pattern, pos)) {
    out.append(s.substr(pos, hit - pos));
    out.append(content);
    pos = hit + pattern.size();
  }
  out.append(s.substr(pos));
  return out;
}

std::string normalize(std::string_view piece, const std::vector<NormalizerStep>& steps) {
  std::string s(piece);
  for (const NormalizerStep& step : steps) {
    if (step.kind == NormalizerStep::Kind::Prepend) {
      if (!s.empty()) s.insert(0, step.content);
    } else {
      s = replace_all(s, step.pattern, step.content);
    }
  }
  return s;
}

void metaspace_pre_tokenize(std::string_view piece, const MetaspaceSpec& spec, bool starts_text,
                            std::vector<std::string>& words) {
  std::string s = replace_all(piece, " ", spec.replacement);
  const bool starts_with_replacement = s.compare(0, spec.replacement.size(), spec.replacement) == 0;
  const bool prepend =
      !s.empty() && !starts_with_replacement &&
      (spec.prepend_scheme == PrependScheme::Always || (spec.prepend_scheme == PrependScheme::First && starts_text));
  if (prepend) s.insert(0, spec.replacement);
  if (!spec.split) {
    if (!s.empty()) words.push_back(std::move(s));
    return;
  }
  // Each replacement character starts a new word ("merged with next").
  size_t begin = 0;
  for (size_t hit = s.find(spec.replacement, 1); hit != std::string::npos;
       hit = s.find(spec.replacement, hit + spec.replacement.size())) {
    if (hit > begin) words.push_back(s.substr(begin, hit - begin));
    begin = hit;
  }
  if (begin < s.size()) words.push_back(s.substr(begin));
}

}  // namespace moxin::text
