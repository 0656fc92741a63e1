// What a path is, or why it cannot be told (a name longer than the OS allows, a directory that
// cannot be searched): std::filesystem's non-throwing status query, so that a bad path from a
// user or from a checkpoint's index file is reported by name like any other bad input.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

namespace moxin {

// why: empty where the path simply does not exist (or was found), else the OS's reason.
inline std::filesystem::file_status path_status(const std::filesystem::path& path, std::string& why) {
  std::error_code ec;
  const std::filesystem::file_status status = std::filesystem::status(path, ec);
  why = ec && ec != std::errc::no_such_file_or_directory ? ec.message() : "";
  return status;
}

}  // namespace moxin
