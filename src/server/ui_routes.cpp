#include "server/ui_routes.hpp"

#include <algorithm>
#include <string>

#include "server/ui_assets.hpp"

namespace moxin::server {
namespace {

// The page loads nothing from elsewhere and runs no inline script: anything injected into it
// could not run or phone home. data: and blob: images are the attached picture's preview.
constexpr const char* kContentSecurityPolicy =
    "default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'";

const UiAsset* find_asset(std::string_view path) {
  const std::span<const UiAsset> assets = ui_assets();
  const auto it = std::find_if(assets.begin(), assets.end(), [&](const UiAsset& a) { return a.path == path; });
  return it == assets.end() ? nullptr : &*it;
}

// "no-cache" lets browsers keep a copy but revalidate it on each load: a 304 costs nothing,
// and a page from an older binary is never used with a newer server.
void answer_asset(const UiAsset& asset, const httplib::Request& req, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_header("ETag", std::string(asset.etag));
  res.set_header("X-Content-Type-Options", "nosniff");
  res.set_header("Content-Security-Policy", kContentSecurityPolicy);
  res.set_header("Referrer-Policy", "no-referrer");
  // The digest cannot occur by chance in the header, so a match anywhere in its list is a match.
  if (req.get_header_value("If-None-Match").find(asset.etag) != std::string::npos) {
    res.status = 304;
    return;
  }
  res.set_content(asset.body.data(), asset.body.size(), std::string(asset.content_type));
}

}  // namespace

void install_ui_routes(httplib::Server& http) {
  const UiAsset* index = find_asset("/ui/index.html");
  http.Get("/", [index](const httplib::Request& req, httplib::Response& res) { answer_asset(*index, req, res); });
  http.Get(R"(/ui/[^/]+)", [](const httplib::Request& req, httplib::Response& res) {
    if (const UiAsset* asset = find_asset(req.path)) {
      answer_asset(*asset, req, res);
    } else {
      res.status = 404;  // the server's error handler answers it in the API's shape
    }
  });
}

}  // namespace moxin::server
