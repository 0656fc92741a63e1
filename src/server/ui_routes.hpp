// The chat page of `moxin serve`: GET / answers the page (ui/index.html), GET /ui/<file> its
// scripts and styles, all from the binary (ui_assets.hpp). The page itself needs no API key:
// it asks for one when /v1/ answers 401. Unknown /ui/ files fall through to the server's 404.
#pragma once

#include <httplib.h>

namespace moxin::server {

void install_ui_routes(httplib::Server& http);

}  // namespace moxin::server
