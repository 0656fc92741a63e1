// The question asked about an image when none is given, as the seed crate (OminiX
// moxin-vlm-mlx) does in its CLI and its POST /v1/describe; users of it rely on the default.
#pragma once

namespace moxin {

inline constexpr const char* kDefaultImagePrompt = "Describe this image.";

}  // namespace moxin
