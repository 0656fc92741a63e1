// How the `moxin` command shows the library's progress reports (include/moxin/progress.hpp) on
// stderr: a bar redrawn in place on a terminal, one summary line per task when stderr is a file
// or a pipe (logs stay readable), nothing with --quiet.
#pragma once

#include "moxin/progress.hpp"

namespace moxin::cli {

ProgressCallback stderr_progress(bool quiet);

}  // namespace moxin::cli
