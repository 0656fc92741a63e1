// `--model` / Model::load's argument -> a checkpoint directory: an existing path as it is, else a
// Hugging Face id "org/name[@revision]" found in (or downloaded into) the Hugging Face cache.
#pragma once

#include <string>

#include "hub/repo_cache.hpp"  // ModelFiles
#include "moxin/progress.hpp"

namespace moxin::hub {

// Throws moxin::Error naming the id, the revision and what is missing (offline and not
// cached, gated, not found, no connection). `files`: what the caller reads (a tokenizer alone
// needs no 17.8 GB of weights).
std::string resolve_model_dir(const std::string& path_or_id, const ProgressCallback& progress = {},
                              ModelFiles files = ModelFiles::Checkpoint);

}  // namespace moxin::hub
