// pybind11 module pyagingrt._C: version and build information. Loading it also registers the
// torch.ops.agingrt.* operators (their TORCH_LIBRARY blocks live in csrc/ops/ and are linked in here).
#include <pybind11/pybind11.h>

#include <string>

namespace py = pybind11;

namespace {

py::dict build_info() {
    py::dict info;
    info["version"] = AGINGRT_VERSION;
#ifdef AGINGRT_WITH_CUDA
    info["with_cuda"] = true;
#else
    info["with_cuda"] = false;
#endif
    info["cuda_archs"] = std::string(AGINGRT_CUDA_ARCHS);
    info["compiler"] = AGINGRT_CXX_COMPILER;
    info["torch_version"] = AGINGRT_TORCH_VERSION;
    return info;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
    m.doc() = R"pbdoc(
        pyagingrt._C: compiled kernels for pyagingrt.

        Importing this module registers the custom operators under torch.ops.agingrt.
        Import it through pyagingrt (which imports torch first), never on its own.
    )pbdoc";
    m.attr("__version__") = AGINGRT_VERSION;
    m.def("build_info", &build_info, R"pbdoc(
        Build configuration: {"version", "with_cuda", "cuda_archs", "compiler", "torch_version"}.
        torch_version is the torch the module was compiled against; it must equal the torch that loads it.
    )pbdoc");
}
