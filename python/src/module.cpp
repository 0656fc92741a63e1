// moxin._core: the engine's public C++ API (include/moxin) for Python. The pure-Python package
// (python/moxin) wraps it with Python's types (paths, PIL images, numpy arrays, chat messages).
#include "bindings.hpp"
#include "moxin/error.hpp"

NB_MODULE(_core, m) {
  m.doc() = "The moxin engine's C++ API; use the `moxin` package, which wraps it.";
  // Every engine failure arrives as moxin.Error (a RuntimeError) carrying the engine's message.
  nanobind::exception<moxin::Error>(m, "Error", PyExc_RuntimeError);
  moxin::python::bind_model(m);
  moxin::python::bind_preprocess(m);
}
