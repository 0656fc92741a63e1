#include "server/server.hpp"

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <semaphore>
#include <thread>

#include "core/check.hpp"
#include "io/json_strict.hpp"
#include "runtime/prompt.hpp"
#include "server/api_error.hpp"
#include "server/chat_request.hpp"
#include "server/chat_response.hpp"
#include "server/describe.hpp"
#include "server/guarded_server.hpp"
#include "server/image_input.hpp"
#include "server/metrics.hpp"
#include "server/ui_routes.hpp"

namespace moxin::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Set by the signal handler, read by serve()'s main loop: the handler does nothing else.
std::atomic<int> g_stop_signals{0};
static_assert(std::atomic<int>::is_always_lock_free, "the signal handler needs a lock-free counter");

extern "C" void on_stop_signal(int) { g_stop_signals.fetch_add(1); }

void install_signal_handlers() {
  struct sigaction action {};
  action.sa_handler = on_stop_signal;
  sigemptyset(&action.sa_mask);
  sigaction(SIGTERM, &action, nullptr);
  sigaction(SIGINT, &action, nullptr);
  // A client that disconnects makes the next write fail; without this it would kill the process.
  std::signal(SIGPIPE, SIG_IGN);
}

void send_error(httplib::Response& res, const ApiError& e) {
  res.status = e.status;
  if (e.status == 503) res.set_header("Retry-After", "1");
  res.set_content(e.to_json().dump(-1, ' ', false, json::error_handler_t::replace), "application/json");
}

bool write_all(httplib::DataSink& sink, const std::string& data) {
  return data.empty() || sink.write(data.data(), data.size());
}

// The client of the request this thread handles hung up (nobody reads the answer any more).
bool client_gone() {
  const ConnectionContext* connection = current_connection();
  return connection && connection->client_gone();
}

bool is_monitoring_path(const std::string& path) { return path == "/health" || path == "/metrics"; }

// httplib reads a Content-Length such as "-1" as a huge unsigned number and answers 413.
bool valid_content_length(const httplib::Request& req) {
  if (!req.has_header("Content-Length")) return true;
  const std::string value = req.get_header_value("Content-Length");
  return !value.empty() && value.size() <= 19 && value.find_first_not_of("0123456789") == std::string::npos;
}

// A refusal decided before the body was read: the connection cannot be reused after it.
void refuse_early(httplib::Response& res, const ApiError& e) {
  send_error(res, e);
  if (ConnectionContext* connection = current_connection()) connection->close_after_response();
}

class HttpApi {
 public:
  HttpApi(Engine& engine, const ServerOptions& options, Scheduler& scheduler, Metrics& metrics)
      : options_(options),
        tokenizer_(engine.tokenizer()),
        scheduler_(scheduler),
        metrics_(metrics),
        image_policy_{options.allow_local_images, options.max_pixels, engine.config().dino.image_size},
        started_(std::chrono::duration_cast<std::chrono::seconds>(
                     std::chrono::system_clock::now().time_since_epoch())
                     .count()) {}

  void install(httplib::Server& http);

 private:
  // Refusals that need no route: a restricted connection, too many headers, a bad length, a
  // missing API key. Runs before the body is read.
  std::optional<ApiError> refuse_before_body(const httplib::Request& req) const;
  void answer_preflight(httplib::Response& res) const;
  template <typename Handler>
  httplib::Server::Handler guarded(Handler handler);
  void chat(const httplib::Request& req, httplib::Response& res);
  json parse_body(const httplib::Request& req) const;
  std::shared_ptr<RequestStream> submit(const ChatRequest& chat);
  GenerationRequest build_generation(const ChatRequest& chat) const;
  void respond_whole(const std::shared_ptr<RequestStream>& stream, const std::shared_ptr<ChatResponder>& responder,
                     httplib::Response& res);
  void respond_stream(std::shared_ptr<RequestStream> stream, std::shared_ptr<ChatResponder> responder,
                      httplib::Response& res);
  bool authorized(const httplib::Request& req) const;

  const ServerOptions& options_;
  Tokenizer tokenizer_;  // shares the engine's (immutable, thread-safe) tokenizer
  Scheduler& scheduler_;
  Metrics& metrics_;
  ImagePolicy image_policy_;
  int64_t started_;
  // A decoded image may take ~270 MB (Pillow's 89.5-megapixel limit, which a small PNG can
  // reach): a few decodes at a time bound the memory many concurrent requests could claim.
  mutable std::counting_semaphore<> decode_slots_{4};
};

// Maps every exception of a handler to an OpenAI-shaped error response.
template <typename Handler>
httplib::Server::Handler HttpApi::guarded(Handler handler) {
  return [handler](const httplib::Request& req, httplib::Response& res) {
    try {
      handler(req, res);
    } catch (const ApiError& e) {
      send_error(res, e);
    } catch (const Error& e) {  // validation below the HTTP layer: the request is at fault
      send_error(res, bad_request(e.what()));
    } catch (const std::exception& e) {
      send_error(res, ApiError(500, cat("internal error: ", e.what()), "", "server_error"));
    }
  };
}

std::optional<ApiError> HttpApi::refuse_before_body(const httplib::Request& req) const {
  const ConnectionContext* connection = current_connection();
  if (connection && connection->admission() == Admission::kMonitoring && !is_monitoring_path(req.path))
    return ApiError(503, connection->refusal(), "", "server_error", "too_many_connections");
  // httplib adds four headers of its own (REMOTE_ADDR, REMOTE_PORT, LOCAL_ADDR, LOCAL_PORT).
  constexpr size_t kAddedByHttplib = 4;
  if (req.headers.size() > options_.connections.max_headers + kAddedByHttplib)
    return ApiError(431, cat("the request has ", req.headers.size() - kAddedByHttplib, " headers; at most ",
                             options_.connections.max_headers, " are accepted"),
                    "", "invalid_request_error", "too_many_headers");
  if (!valid_content_length(req))
    return ApiError(400, cat("Content-Length '", req.get_header_value("Content-Length").substr(0, 40),
                             "' is not a byte count (a non-negative integer)"));
  if (req.method != "OPTIONS" && req.path.compare(0, 4, "/v1/") == 0 && !authorized(req))
    return ApiError(401, "invalid or missing API key: send the header 'Authorization: Bearer <key>'", "",
                    "invalid_request_error", "invalid_api_key");
  return std::nullopt;
}

// A browser asks before a cross-origin POST with a JSON body or an Authorization header. The
// CORS headers themselves are the server's default headers, present only with --cors-origin:
// without them the browser refuses, which is what CORS off means.
void HttpApi::answer_preflight(httplib::Response& res) const {
  res.status = 204;
  res.set_header("Allow", "GET, POST, OPTIONS");
  if (options_.cors_origin.empty()) return;
  res.set_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS");
  res.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type");
  res.set_header("Access-Control-Max-Age", "600");
}

bool HttpApi::authorized(const httplib::Request& req) const {
  if (options_.api_key.empty()) return true;
  static const std::string kBearer = "Bearer ";
  const std::string header = req.get_header_value("Authorization");
  const std::string given = header.compare(0, kBearer.size(), kBearer) == 0 ? header.substr(kBearer.size()) : "";
  return secrets_equal(given, options_.api_key);
}

GenerationRequest HttpApi::build_generation(const ChatRequest& chat) const {
  GenerationRequest g;
  if (chat.image_url) {
    decode_slots_.acquire();
    struct Release {
      std::counting_semaphore<>& slots;
      ~Release() { slots.release(); }
    } release{decode_slots_};
    g.image = load_request_image(*chat.image_url, image_policy_);
  }
  try {
    g.prompt_ids = tokenize_prompt(tokenizer_, chat.turns);
  } catch (const Error& e) {
    throw bad_request(e.what(), "messages");
  }
  const int64_t prompt = static_cast<int64_t>(g.prompt_ids.size()) + (g.image ? scheduler_.image_tokens() : 0);
  const int64_t limit = scheduler_.max_sequence_positions();
  if (prompt >= limit)
    throw ApiError(400, cat("the prompt has ", prompt, " tokens", g.image ? " (image tokens included)" : "",
                            ", which leaves no room to answer in the context of ", limit, " tokens"),
                   "messages", "invalid_request_error", "context_length_exceeded");
  const int64_t max_tokens = chat.max_tokens.value_or(limit - prompt);
  if (prompt + max_tokens > limit)
    throw ApiError(400, cat("the prompt's ", prompt, " tokens plus max_tokens ", max_tokens,
                            " exceed the context of ", limit, " tokens; lower max_tokens to at most ", limit - prompt),
                   "max_tokens", "invalid_request_error", "context_length_exceeded");
  g.max_tokens = static_cast<int>(max_tokens);
  g.sampling = chat.sampling;
  g.stop = chat.stop;
  g.top_logprobs = chat.logprobs ? chat.top_logprobs : -1;
  g.ignore_eos = chat.ignore_eos;
  return g;
}

json HttpApi::parse_body(const httplib::Request& req) const {
  if (req.body.empty()) throw bad_request("the request body is empty: send a JSON object");
  try {
    return parse_json_strict(req.body, "the request body", 32);
  } catch (const Error& e) {
    throw bad_request(e.what());
  }
}

std::shared_ptr<RequestStream> HttpApi::submit(const ChatRequest& chat) {
  std::shared_ptr<RequestStream> stream = scheduler_.submit(build_generation(chat));
  if (!stream)
    throw ApiError(503, "the server is at capacity (request queue full) or shutting down; retry later", "",
                   "server_error", "server_overloaded");
  return stream;
}

void HttpApi::chat(const httplib::Request& req, httplib::Response& res) {
  const ChatRequest chat = parse_chat_request(parse_body(req));
  std::shared_ptr<RequestStream> stream = submit(chat);
  auto responder = std::make_shared<ChatResponder>(tokenizer_, options_.model_name, chat.logprobs, chat.include_usage);
  if (chat.stream) {
    respond_stream(std::move(stream), std::move(responder), res);
  } else {
    respond_whole(stream, responder, res);
  }
}

void HttpApi::respond_whole(const std::shared_ptr<RequestStream>& stream,
                            const std::shared_ptr<ChatResponder>& responder, httplib::Response& res) {
  std::string text;
  std::vector<GeneratedToken> tokens;
  for (;;) {
    // Short waits, so that a client that hangs up is noticed and its sequence freed at once.
    RequestStream::Update update = stream->next(std::chrono::milliseconds(100));
    if (!update.outcome && client_gone()) {
      stream->cancel();
      res.status = 499;  // nginx's "client closed request": nobody reads it, the log does
      return;
    }
    text += update.text;
    for (GeneratedToken& t : update.tokens) tokens.push_back(std::move(t));
    if (!update.outcome) continue;
    if (!update.outcome->error.empty()) throw ApiError(500, update.outcome->error, "", "server_error");
    res.set_content(responder->completion(text, tokens, *update.outcome).dump(-1, ' ', false,
                                                                              json::error_handler_t::replace),
                    "application/json");
    return;
  }
}

void HttpApi::respond_stream(std::shared_ptr<RequestStream> stream, std::shared_ptr<ChatResponder> responder,
                             httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  // The whole stream is written in ONE provider call: httplib calls a provider again only
  // while the server runs, and a stream that started before SIGTERM must still complete.
  // A failed write means the client is gone: the request is cancelled and its slot freed.
  res.set_chunked_content_provider(
      "text/event-stream",
      [stream, responder](size_t, httplib::DataSink& sink) {
        if (!write_all(sink, responder->stream_start())) {
          stream->cancel();
          return false;
        }
        for (;;) {
          RequestStream::Update update = stream->next(std::chrono::milliseconds(100));
          if (!update.outcome && update.empty() && client_gone()) {  // e.g. still queued: nothing to write
            stream->cancel();
            return false;
          }
          std::string out = responder->stream_update(update.text, update.tokens);
          if (update.outcome) {
            if (update.outcome->error.empty()) {
              out += responder->stream_end(*update.outcome);
            } else {
              out += sse_event(ApiError(500, update.outcome->error, "", "server_error").to_json()) + "data: [DONE]\n\n";
            }
            if (!write_all(sink, out)) return false;
            sink.done();
            return true;
          }
          if (!write_all(sink, out)) {
            stream->cancel();
            return false;
          }
        }
      },
      // Runs when the response is dropped, written or not: a stream that never started (the
      // connection failed first) is cancelled too; cancelling a finished one changes nothing.
      [stream](bool) { stream->cancel(); });
}

void HttpApi::install(httplib::Server& http) {
  http.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (std::optional<ApiError> refusal = refuse_before_body(req)) {
      refuse_early(res, *refusal);
      return httplib::Server::HandlerResponse::Handled;
    }
    if (req.method == "OPTIONS") {
      answer_preflight(res);
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  // httplib's own refusals (unknown route, body over the limit, malformed HTTP) in OpenAI's shape.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                     httplib::Response& res) {
    if (!res.body.empty() || res.status == 499) return httplib::Server::HandlerResponse::Unhandled;
    ConnectionContext* connection = current_connection();
    // httplib's own refusals (unreadable request, body over the limit, unknown route) may leave
    // unread bytes that would be taken for the next request: close the connection after them.
    if (connection) connection->close_after_response();
    const std::string read_failure = connection ? connection->read_failure() : "";
    if (read_failure == "headers_too_large") {
      send_error(res, ApiError(431, cat("the request headers are larger than ", options_.connections.max_header_bytes,
                                        " bytes"), "", "invalid_request_error", "headers_too_large"));
    } else if (read_failure == "header_timeout" || read_failure == "body_timeout") {
      const bool headers = read_failure == "header_timeout";
      send_error(res, ApiError(408, cat("the request ", headers ? "headers" : "body", " did not arrive within ",
                                        headers ? options_.connections.header_timeout_s
                                                : options_.connections.body_timeout_s,
                                        " s (", headers ? "--header-timeout" : "--body-timeout", ")"),
                               "", "invalid_request_error", "request_timeout"));
    } else if (res.status == 404) {
      send_error(res, ApiError(404, cat("unknown route: ", req.method, " ", req.path), "", "invalid_request_error",
                               "unknown_url"));
    } else if (res.status == 413) {
      // httplib caps form-encoded bodies (curl -d's default type) at 8 KB whatever the limit.
      const bool form = req.get_header_value("Content-Type").find("x-www-form-urlencoded") != std::string::npos;
      send_error(res, ApiError(413, form ? std::string("form-encoded bodies are limited to 8 KB: send the JSON with "
                                                       "'Content-Type: application/json'")
                                         : cat("the request body is larger than the server's limit of ",
                                               options_.max_body_bytes, " bytes (--max-body-mb)"),
                               "", "invalid_request_error", "request_too_large"));
    } else {
      send_error(res, ApiError(res.status, cat("HTTP error ", res.status), "",
                               res.status >= 500 ? "server_error" : "invalid_request_error"));
    }
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    send_error(res, ApiError(500, "internal error", "", "server_error"));
  });
  http.set_logger([this](const httplib::Request& req, const httplib::Response& res) {
    metrics_.count_response(res.status);
    if (options_.log_requests) std::fprintf(stderr, "[serve] %s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);
  });

  http.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) { chat(req, res); }));
  // The seed crate's route (describe.hpp).
  http.Post("/v1/describe", guarded([this](const httplib::Request& req, httplib::Response& res) {
    const ChatRequest chat = parse_describe_request(parse_body(req));
    const auto submitted = Clock::now();
    res.set_content(describe_response(*submit(chat), submitted).dump(-1, ' ', false, json::error_handler_t::replace),
                    "application/json");
  }));
  http.Get("/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
    const json model = {{"id", options_.model_name}, {"object", "model"}, {"created", started_}, {"owned_by", "moxin"}};
    res.set_content(json{{"object", "list"}, {"data", json::array({model})}}.dump(), "application/json");
  }));
  if (options_.ui) install_ui_routes(http);
  http.Get("/health", [](const httplib::Request&, httplib::Response& res) {
    res.set_content(R"({"status":"ok"})", "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_.render(scheduler_.stats()), "text/plain; version=0.0.4");
  });

  // Known routes with the wrong method: 405 with the method they take.
  const auto not_allowed = [](std::string allow) {
    return [allow](const httplib::Request& req, httplib::Response& res) {
      send_error(res, ApiError(405, cat(req.method, " is not allowed on ", req.path, " (use ", allow, ")"), "",
                               "invalid_request_error", "method_not_allowed"));
      res.set_header("Allow", allow);
    };
  };
  for (const char* path : {"/v1/models", "/health", "/metrics"}) {
    http.Post(path, not_allowed("GET"));
    http.Put(path, not_allowed("GET"));
    http.Patch(path, not_allowed("GET"));
    http.Delete(path, not_allowed("GET"));
  }
  for (const char* path : {"/v1/chat/completions", "/v1/describe"}) {
    http.Get(path, not_allowed("POST"));
    http.Put(path, not_allowed("POST"));
    http.Patch(path, not_allowed("POST"));
    http.Delete(path, not_allowed("POST"));
  }
}

}  // namespace

bool secrets_equal(const std::string& a, const std::string& b) {
  // Comparing digests makes the time independent of the lengths and of the first difference.
  const Digest da = sha256(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(a.data()), a.size()));
  const Digest db = sha256(std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(b.data()), b.size()));
  uint8_t diff = 0;
  for (size_t i = 0; i < da.size(); ++i) diff |= static_cast<uint8_t>(da[i] ^ db[i]);
  return diff == 0;
}

void serve(Engine& engine, const ServerOptions& options) {
  Metrics metrics;
  Scheduler scheduler(engine, options.scheduler, &metrics);
  HttpApi api(engine, options, scheduler, metrics);

  // Each connection holds a worker thread while it is open (streams included); the limits and
  // deadlines of GuardedServer keep slow or numerous clients from taking them all.
  GuardedServer http(options.connections);
  const size_t threads = http.worker_threads();
  http.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http.set_payload_max_length(options.max_body_bytes);
  http.set_keep_alive_max_count(1000);
  http.set_write_timeout(options.connections.write_timeout_s);  // the accepted sockets' SO_SNDTIMEO
  if (!options.cors_origin.empty())
    http.set_default_headers({{"Access-Control-Allow-Origin", options.cors_origin}, {"Vary", "Origin"}});
  api.install(http);

  const int port = options.port == 0 ? http.bind_to_any_port(options.host)
                                     : (http.bind_to_port(options.host, options.port) ? options.port : -1);
  MOXIN_CHECK(port > 0, "[serve] cannot listen on ", options.host, ":", options.port,
              " (is the port in use, or the host not an address of this machine?)");
  http.widen_listen_backlog();
  install_signal_handlers();
  std::atomic<bool> listening_ended{false};
  std::thread listener([&] {
    http.listen_after_bind();
    listening_ended = true;
  });
  std::printf("[serve] listening on http://%s:%d (model '%s', %s, max batch %d)\n", options.host.c_str(), port,
              options.model_name.c_str(), engine.backend().name().c_str(), options.scheduler.max_batch);
  std::fflush(stdout);

  while (g_stop_signals.load() == 0 && !listening_ended) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::fprintf(stderr, "[serve] stopping: no new connections; finishing the requests in flight\n");
  std::thread impatient([] {  // a second signal does not wait for the requests in flight
    while (g_stop_signals.load() < 2) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::_Exit(1);
  });
  impatient.detach();
  scheduler.drain();  // requests arriving from now on are answered 503
  http.stop();        // closes the listening socket; workers finish their current requests
  listener.join();    // returns once every worker has ended
  scheduler.wait();
  std::fprintf(stderr, "[serve] stopped\n");
}

}  // namespace moxin::server
