// The pybind11 module cbgan_ext._C: importing it loads this library and so registers the ops above.
// It only reports build facts; the ops themselves are reached through torch.ops.cbgan_ext.
#include <ATen/Parallel.h>
#include <pybind11/pybind11.h>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace py = pybind11;

static py::dict build_info() {
  py::dict d;
#ifdef WITH_CUDA
  d["cuda"] = true;
  d["cuda_version"] = std::to_string(CUDART_VERSION / 1000) + "." + std::to_string((CUDART_VERSION % 1000) / 10);
  py::list archs;
  for (int a : {CBGAN_EXT_CUDA_ARCHS}) archs.append(std::to_string(a / 10) + "." + std::to_string(a % 10));
  d["cuda_archs"] = archs;
#else
  d["cuda"] = false;
  d["cuda_version"] = py::none();
  d["cuda_archs"] = py::list();
#endif
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
#else
  d["openmp"] = false;
  d["openmp_version"] = py::none();
#endif
  d["num_threads"] = at::get_num_threads();
  return d;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "cbgan_ext compiled kernels (ops are registered with torch.ops.cbgan_ext)";
  m.def("build_info", &build_info, "What this build of the extension contains");
}
