"""Build cbgan_ext's extension: C++ CPU kernels always, CUDA kernels when nvcc and a CUDA build of torch exist.

CBGAN_EXT_CUDA=1 forces the CUDA build (fails loudly if impossible), CBGAN_EXT_CUDA=0 forces CPU-only,
unset means auto-detect. TORCH_CUDA_ARCH_LIST picks the GPU archs; with no GPU visible it defaults to
"8.0;9.0" because torch cannot guess it then.
"""
import glob
import os
import shutil
import sys

from setuptools import setup


def _find_cuda_home():
    # torch guesses CUDA_HOME from `which nvcc`'s grandparent, which is wrong where nvcc is a wrapper or
    # link in /usr/local/bin: take the first candidate that really holds the toolkit's headers.
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    candidates = []
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if os.path.exists(os.path.join(c, "include", "cuda_runtime_api.h")) and os.path.exists(
                os.path.join(c, "bin", "nvcc")):
            return c
    return None


_cuda_home = _find_cuda_home()
if _cuda_home:
    os.environ["CUDA_HOME"] = _cuda_home

import torch  # noqa: E402
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402



def _want_cuda():
    flag = os.environ.get("CBGAN_EXT_CUDA", "auto").lower()
    possible = torch.version.cuda is not None and _cuda_home is not None and os.path.exists(
        os.path.join(_cuda_home, "bin", "nvcc"))
    if flag in ("0", "off", "false", "no"):
        return False, "CBGAN_EXT_CUDA=0"
    if flag in ("1", "on", "true", "yes"):
        if not possible:
            sys.exit("cbgan_ext: CBGAN_EXT_CUDA=1 but no nvcc (CUDA_HOME=%s) or torch is CPU-only "
                     "(torch.version.cuda=%s)"
                     % (_cuda_home, torch.version.cuda))
        return True, "CBGAN_EXT_CUDA=1"
    if not possible:
        why = "torch is a CPU-only build" if torch.version.cuda is None else "nvcc not found"
        return False, why
    return True, "nvcc at %s" % _cuda_home


def _arch_macro(arch_list):
    # "8.0;9.0+PTX" -> "80,90": a comma list survives the compiler command line, quotes do not.
    out = []
    for a in arch_list.replace(" ", ";").split(";"):
        a = a.strip().split("+")[0]
        if a:
            out.append(a.replace(".", "").rstrip("a"))
    return ",".join(out)


def build_extension():
    with_cuda, why = _want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    cxx = ["-O3", "-fopenmp", "-Wno-psabi"]
    link = ["-fopenmp"]
    macros = []
    if with_cuda:
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        arch_list = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
        if not arch_list:
            major, minor = torch.cuda.get_device_capability()
            arch_list = "%d.%d" % (major, minor)
        print("cbgan_ext: building CPU + CUDA kernels (%s), archs %s" % (why, arch_list))
        sources += sorted(glob.glob("csrc/cuda/*.cu"))
        macros += [("WITH_CUDA", None)]
        # nvcc would split a comma list in -D into several options: only the C++ side needs the archs.
        cxx += ["-DCBGAN_EXT_CUDA_ARCHS=" + _arch_macro(arch_list)]
        nvcc = ["-O3", "--use_fast_math", "-lineinfo"]
        return CUDAExtension("cbgan_ext._C", sources, define_macros=macros,
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    print("cbgan_ext: building CPU-only kernels (%s)" % why)
    return CppExtension("cbgan_ext._C", sources, define_macros=macros,
                        extra_compile_args={"cxx": cxx}, extra_link_args=link)


# Metadata, dependencies and the cbgan-ext script are in pyproject.toml; this file builds the extension.
setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
