#include "hub/repo_ref.hpp"

#include <algorithm>
#include <cctype>

namespace moxin::hub {
namespace {

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.';
}

bool valid_part(const std::string& part) {
  if (part.empty() || part.size() > 96) return false;
  if (!std::all_of(part.begin(), part.end(), is_name_char)) return false;
  if (part.find("--") != std::string::npos || part.find("..") != std::string::npos) return false;
  // The hub's names start and end with a letter, a digit or '_'.
  const auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; };
  return word(part.front()) && word(part.back());
}

// Branches and tags may hold '/' ("refs/pr/1"); nothing that could escape the cache folder.
bool valid_revision(const std::string& rev) {
  if (rev.empty() || rev.size() > 255 || rev.front() == '/' || rev.back() == '/') return false;
  if (rev.find("..") != std::string::npos || rev.find("//") != std::string::npos) return false;
  return std::all_of(rev.begin(), rev.end(), [](char c) { return is_name_char(c) || c == '/'; });
}

}  // namespace

std::optional<RepoRef> parse_repo_ref(const std::string& text) {
  const size_t at = text.find('@');
  const std::string id = text.substr(0, at);
  const std::string revision = at == std::string::npos ? "main" : text.substr(at + 1);
  const size_t slash = id.find('/');
  if (slash == std::string::npos || id.find('/', slash + 1) != std::string::npos) return std::nullopt;
  if (!valid_part(id.substr(0, slash)) || !valid_part(id.substr(slash + 1))) return std::nullopt;
  if (id.size() >= 4 && id.compare(id.size() - 4, 4, ".git") == 0) return std::nullopt;
  if (!valid_revision(revision)) return std::nullopt;
  return RepoRef{id, revision};
}

bool is_commit_hash(const std::string& revision) {
  return revision.size() == 40 && std::all_of(revision.begin(), revision.end(), [](char c) {
           return std::isdigit(static_cast<unsigned char>(c)) != 0 || (c >= 'a' && c <= 'f');
         });
}

}  // namespace moxin::hub
