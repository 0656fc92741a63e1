// `--model` / Model::load's argument -> a checkpoint directory: an existing path as it is, else a
// Hugging Face id "org/name[@revision]" found in (or downloaded into) the Hugging Face cache.
#pragma once

#include <string>

#include "moxin/progress.hpp"

namespace moxin::hub {

// Throws moxin::Error naming the id, the revision and what is missing (offline and not
// cached, gated, not found, no connection).
std::string resolve_model_dir(const std::string& path_or_id, const ProgressCallback& progress = {});

}  // namespace moxin::hub
