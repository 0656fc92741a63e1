// The parts of the moxin._core extension module, each registering its own names.
#pragma once

#include <nanobind/nanobind.h>

namespace moxin::python {

void bind_model(nanobind::module_& m);       // Model, Generation (model_binding.cpp)
void bind_preprocess(nanobind::module_& m);  // preprocess, read_file (preprocess_binding.cpp)

}  // namespace moxin::python
