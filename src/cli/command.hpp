// Subcommand registry: each cmd_*.cpp registers itself with a static Command, so adding a
// subcommand never touches main.cpp.
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace moxin::cli {

// Adds the subcommand to `app` (options + callback). The callback may throw moxin::Error;
// main prints it as "error: ..." and exits 1.
using CommandSetup = std::function<void(CLI::App& app)>;

struct Command {
  Command(std::string name, CommandSetup setup);
};

struct RegisteredCommand {
  std::string name;
  CommandSetup setup;
};

std::vector<RegisteredCommand>& registered_commands();

}  // namespace moxin::cli
