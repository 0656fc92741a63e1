#include "io/json_strict.hpp"

#include <fstream>
#include <iterator>
#include <set>
#include <vector>

#include "core/check.hpp"

namespace moxin {
namespace {

using nlohmann::json;

// nlohmann's parse errors quote the last token read, which may be a whole multi-megabyte line.
constexpr size_t kMaxQuotedError = 200;

json parse_checked(std::string_view text, const std::string& context, int max_depth, bool refuse_duplicates) {
  std::vector<std::set<std::string>> open_objects;  // keys seen in each object being parsed
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
      case json::parse_event_t::array_start:
        MOXIN_CHECK(depth < max_depth, context, " nests deeper than ", max_depth, " levels");
        if (event == json::parse_event_t::object_start) open_objects.emplace_back();
        break;
      case json::parse_event_t::key:
        MOXIN_CHECK(!refuse_duplicates ||
                        (!open_objects.empty() && open_objects.back().insert(parsed.get<std::string>()).second),
                    context, " has the key '", parsed.get<std::string>(), "' twice");
        break;
      case json::parse_event_t::object_end:
        open_objects.pop_back();
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return json::parse(text.begin(), text.end(), callback);
  } catch (const json::exception& e) {
    const std::string_view what = e.what();
    fail(context, " is not valid JSON: ", what.substr(0, kMaxQuotedError),
         what.size() > kMaxQuotedError ? "..." : "");
  }
}

}  // namespace

json parse_json_strict(std::string_view text, const std::string& context, int max_depth) {
  return parse_checked(text, context, max_depth, true);
}

json parse_json_bounded(std::string_view text, const std::string& context, int max_depth) {
  return parse_checked(text, context, max_depth, false);
}

nlohmann::json read_json_file(const std::string& path, const std::string& area) {
  std::ifstream in(path, std::ios::binary);
  MOXIN_CHECK(in.good(), area, " cannot read '", path, "'");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  MOXIN_CHECK(!in.bad(), area, " error while reading '", path, "'");
  return parse_json_strict(text, cat(area, " ", path));
}

std::string describe_json(const nlohmann::json& value) {
  if (value.is_object() || value.is_array()) return cat("an ", value.type_name());
  std::string text = value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  if (text.size() > 60) text = text.substr(0, 57) + "...";
  return text;
}

}  // namespace moxin
