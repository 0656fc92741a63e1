// Built where libcurl or OpenSSL is missing (a machine without the -dev packages): models by
// id still load from the cache, and a missing one gets a message saying how to get it.
#include "core/check.hpp"
#include "hub/snapshot_download.hpp"

namespace moxin::hub {

std::filesystem::path download_snapshot(const RepoRef& ref, const HubSettings& settings, const ProgressCallback&,
                                        ModelFiles) {
  fail("[hub] ", ref.display(), " is not in the Hugging Face cache (", settings.cache.string(),
       ") and this moxin was built without libcurl, so it cannot download it: install libcurl4-openssl-dev "
       "and rebuild, or download it with huggingface_hub (`hf download ", ref.id, " --revision ", ref.revision,
       "`) into the same cache");
}

}  // namespace moxin::hub
