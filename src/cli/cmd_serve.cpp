// `moxin serve`: the OpenAI-compatible HTTP server with continuous batching (src/server).
// Built only where cpp-httplib was found at configure time; elsewhere the subcommand exists
// just to say so.
#include <CLI/CLI.hpp>
#include <filesystem>
#include <string>

#include "cli/command.hpp"
#include "cli/model_options.hpp"
#include "core/check.hpp"

#ifdef MOXIN_WITH_SERVER
#include "runtime/api_convert.hpp"
#include "server/server.hpp"
#endif

namespace moxin::cli {
namespace {

#ifdef MOXIN_WITH_SERVER

struct ServeArgs {
  ModelOptions model;
  server::ServerOptions server;
  int max_body_mb = 32;
  bool no_prefix_cache = false;
  bool no_ui = false;
  std::string issue_ahead = "auto";
  CLI::Option* max_pixels_option = nullptr;  // the server's default differs from the CLI's
};

void run(ServeArgs& a) {
  server::ServerOptions& o = a.server;
  o.max_body_bytes = static_cast<size_t>(a.max_body_mb) << 20;
  if (a.max_pixels_option->count() > 0) o.max_pixels = a.model.max_pixels;
  o.scheduler.prefix_cache = !a.no_prefix_cache;
  if (a.issue_ahead != "auto") o.scheduler.issue_ahead = a.issue_ahead == "on";
  o.ui = !a.no_ui;
  // A directory is named by its folder, a Hugging Face id by itself (as vLLM does).
  const std::string& model = a.model.model_dir;
  if (o.model_name.empty())
    o.model_name = std::filesystem::exists(model) ? std::filesystem::path(model).filename().string()
                                                  : model.substr(0, model.find('@'));
  if (o.model_name.empty()) o.model_name = "moxin-vlm";
  auto engine = Engine::load(a.model.model_dir, to_engine_options(a.model.load_options()));
  server::serve(*engine, o);
}

const Command kServe("serve", [](CLI::App& app) {
  auto args = std::make_shared<ServeArgs>();
  server::ServerOptions& o = args->server;
  o.model_name.clear();
  CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server with continuous batching");
  args->model.add_to(*c);
  args->max_pixels_option = c->get_option("--max-pixels");
  args->max_pixels_option->description(cat("Refuse images with more pixels than this (default ", o.max_pixels,
                                           " for the server; checked from the header, before decoding)"));
  c->add_option("--host", o.host, "Address to bind (loopback unless told otherwise)");
  c->add_option("--port", o.port, "TCP port (0 = any free port, printed at startup)")->check(CLI::Range(0, 65535));
  c->add_option("--api-key", o.api_key, "Require 'Authorization: Bearer KEY' on /v1/ routes");
  c->add_option("--served-model-name", o.model_name, "Model id in responses (default: the model folder's name)");
  c->add_option("--max-batch", o.scheduler.max_batch, "Most sequences in one decoder step")->check(CLI::Range(1, 4096));
  c->add_option("--max-queue", o.scheduler.max_queue, "Most requests waiting for a slot; more get 503")
      ->check(CLI::Range(1, 1 << 20));
  c->add_option("--prefill-chunk", o.scheduler.prefill_chunk, "Prompt positions of one sequence per step")
      ->check(CLI::Range(10, 1 << 20));
  c->add_option("--prefill-budget", o.scheduler.prefill_budget, "Prompt positions of all sequences per step")
      ->check(CLI::Range(10, 1 << 20));
  c->add_option("--image-cache", o.scheduler.image_cache, "Projected images kept for reuse (0 = off)");
  c->add_flag("--no-prefix-cache", args->no_prefix_cache, "Do not reuse KV blocks of identical prompt prefixes");
  c->add_option("--issue-ahead", args->issue_ahead,
                "Issue each decode step before reading the last one's tokens: lower time per token, a first "
                "token one step later (auto: on a GPU)")
      ->check(CLI::IsMember({"auto", "on", "off"}));
  c->add_option("--max-body-mb", args->max_body_mb, "Largest request body in MB (413 above)")->check(CLI::Range(1, 4096));
  c->add_flag("--allow-local-images", o.allow_local_images, "Accept image_url values that are local file paths");
  server::ConnectionLimits& limits = o.connections;
  c->add_option("--max-connections", limits.max_connections,
                "Open connections served at once; more get 503 (except /health and /metrics)")
      ->check(CLI::Range(1, 900));  // each holds a thread, and httplib's select() needs fds below 1024
  c->add_option("--max-connections-per-client", limits.max_per_client, "Open connections from one client address")
      ->check(CLI::Range(1, 900));
  c->add_option("--header-timeout", limits.header_timeout_s, "Seconds to receive a request's line and headers (408)")
      ->check(CLI::Range(1, 3600));
  c->add_option("--body-timeout", limits.body_timeout_s, "Seconds to receive a request's body (408)")
      ->check(CLI::Range(1, 3600));
  c->add_option("--cors-origin", o.cors_origin,
                "Allow browsers on this origin (e.g. https://app.example, or *) to call the API; CORS is off without it");
  c->add_flag("--no-ui", args->no_ui, "Do not serve the chat page at / (the API is unchanged)");
  c->add_flag("--log-requests", o.log_requests, "Print one line per request to stderr");
  c->callback([args] {
    if (args->server.scheduler.prefill_budget < args->server.scheduler.prefill_chunk)
      args->server.scheduler.prefill_budget = args->server.scheduler.prefill_chunk;
    run(*args);
  });
});

#else

const Command kServe("serve", [](CLI::App& app) {
  CLI::App* c = app.add_subcommand("serve", "OpenAI-compatible HTTP server (not built in this binary)");
  c->allow_extras();
  c->callback([] {
    fail("[serve] this moxin was built without the HTTP server: cpp-httplib (httplib.h) was not found when it "
         "was configured; install it (Debian: libcpp-httplib-dev) and configure again");
  });
});

#endif

}  // namespace
}  // namespace moxin::cli
