// HttpClient over libcurl (Debian's libcurl4-openssl-dev).
#include <curl/curl.h>

#include <algorithm>
#include <cctype>
#include <mutex>

#include "core/check.hpp"
#include "hub/download/http_client.hpp"

namespace moxin::hub {
namespace {

struct Transfer {
  CURL* curl = nullptr;
  HttpResponse response;
  const std::function<void(std::string_view, long)>* on_data = nullptr;
  std::string callback_error;  // an exception from on_data, rethrown after curl returns
};

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

size_t on_header(char* data, size_t size, size_t count, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  const std::string line(data, size * count);
  if (line.rfind("HTTP/", 0) == 0) {
    t.response.headers.clear();  // a new response of the redirect chain
  } else if (const size_t colon = line.find(':'); colon != std::string::npos) {
    std::string value = line.substr(colon + 1);
    const auto blank = [](unsigned char c) { return std::isspace(c) != 0; };
    value.erase(value.begin(), std::find_if_not(value.begin(), value.end(), blank));
    value.erase(std::find_if_not(value.rbegin(), value.rend(), blank).base(), value.end());
    t.response.headers[lower(line.substr(0, colon))] = value;
  }
  return size * count;
}

size_t on_body(char* data, size_t size, size_t count, void* user) {
  auto& t = *static_cast<Transfer*>(user);
  long status = 0;
  curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &status);
  if (t.on_data && status >= 200 && status < 300) {
    try {
      (*t.on_data)(std::string_view(data, size * count), status);
    } catch (const std::exception& e) {
      t.callback_error = e.what();
      return 0;  // aborts the transfer
    }
  } else {
    t.response.body.append(data, size * count);
  }
  return size * count;
}

class CurlHttpClient final : public HttpClient {
 public:
  CurlHttpClient() {
    static std::once_flag once;
    std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
  }

  HttpResponse head(const std::string& url, const std::vector<std::string>& headers) override {
    return perform(url, headers, nullptr, true);
  }
  HttpResponse get(const std::string& url, const std::vector<std::string>& headers) override {
    return perform(url, headers, nullptr, false);
  }
  HttpResponse download(const std::string& url, const std::vector<std::string>& headers,
                        const std::function<void(std::string_view, long)>& on_data) override {
    return perform(url, headers, &on_data, false);
  }

 private:
  static HttpResponse perform(const std::string& url, const std::vector<std::string>& headers,
                              const std::function<void(std::string_view, long)>* on_data, bool head) {
    Transfer t;
    t.curl = curl_easy_init();
    MOXIN_CHECK(t.curl, "[hub] libcurl could not start a transfer");
    curl_slist* list = nullptr;
    for (const std::string& h : headers) list = curl_slist_append(list, h.c_str());
    char error[CURL_ERROR_SIZE] = {};
    t.on_data = on_data;
    curl_easy_setopt(t.curl, CURLOPT_URL, url.c_str());
    curl_easy_setopt(t.curl, CURLOPT_HTTPHEADER, list);
    curl_easy_setopt(t.curl, CURLOPT_USERAGENT, "moxin-vlm");
    curl_easy_setopt(t.curl, CURLOPT_NOBODY, head ? 1L : 0L);
    // Redirects to the CDN; curl does not send Authorization to another host.
    curl_easy_setopt(t.curl, CURLOPT_FOLLOWLOCATION, head ? 0L : 1L);
    curl_easy_setopt(t.curl, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(t.curl, CURLOPT_CONNECTTIMEOUT, 20L);
    // A stalled connection fails instead of hanging: under 1 byte/s for 60 s.
    curl_easy_setopt(t.curl, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(t.curl, CURLOPT_LOW_SPEED_TIME, 60L);
    curl_easy_setopt(t.curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(t.curl, CURLOPT_HEADERDATA, &t);
    curl_easy_setopt(t.curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(t.curl, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(t.curl, CURLOPT_ERRORBUFFER, error);
    curl_easy_setopt(t.curl, CURLOPT_NOSIGNAL, 1L);
    const CURLcode rc = curl_easy_perform(t.curl);
    curl_easy_getinfo(t.curl, CURLINFO_RESPONSE_CODE, &t.response.status);
    curl_slist_free_all(list);
    curl_easy_cleanup(t.curl);
    if (!t.callback_error.empty()) throw Error(t.callback_error);
    if (rc != CURLE_OK)
      throw ConnectionError(cat(url, ": ", error[0] ? error : curl_easy_strerror(rc)));
    return std::move(t.response);
  }
};

}  // namespace

std::unique_ptr<HttpClient> make_curl_http_client() { return std::make_unique<CurlHttpClient>(); }

}  // namespace moxin::hub
