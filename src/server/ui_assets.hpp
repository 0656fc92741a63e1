// The files of the chat page (src/server/ui/), compiled into the binary: the definition of
// ui_assets() is generated at build time by cmake/EmbedUiFiles.cmake.
#pragma once

#include <span>
#include <string_view>

namespace moxin::server {

struct UiAsset {
  std::string_view path;          // "/ui/<file name>"
  std::string_view content_type;  // from the file's extension
  std::string_view etag;          // a quoted digest of the bytes: changes whenever the file does
  std::string_view body;
};

// Every file of the page, sorted by path.
std::span<const UiAsset> ui_assets();

}  // namespace moxin::server
