// The few HTTP calls the hub needs, behind an interface so the downloader's logic does not
// depend on the transport (libcurl).
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "hub/snapshot_download.hpp"  // ConnectionError

namespace moxin::hub {

struct HttpResponse {
  long status = 0;
  std::map<std::string, std::string> headers;  // of the last response; names in lower case
  std::string body;                            // empty for download()
};

class HttpClient {
 public:
  virtual ~HttpClient() = default;
  // HEAD without following redirects: the hub puts its headers on the first response.
  virtual HttpResponse head(const std::string& url, const std::vector<std::string>& headers) = 0;
  // GET following redirects, the body in memory.
  virtual HttpResponse get(const std::string& url, const std::vector<std::string>& headers) = 0;
  // GET following redirects; each chunk of a 2xx body goes to on_data with the status (206 for
  // a honoured Range request); other statuses keep their body in the response.
  virtual HttpResponse download(const std::string& url, const std::vector<std::string>& headers,
                                const std::function<void(std::string_view chunk, long status)>& on_data) = 0;
};

std::unique_ptr<HttpClient> make_curl_http_client();

}  // namespace moxin::hub
