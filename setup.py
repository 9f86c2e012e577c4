"""Build script for graphattn's single native extension, ``graphattn._C``.

* ``csrc/graphattn.cpp`` holds every operator schema (``TORCH_LIBRARY``);
* ``csrc/cpu/*.cpp`` hold the CPU kernels (``TORCH_LIBRARY_IMPL(graphattn, CPU, m)``),
  compiled with C++20 (the torch 2.13 headers need it) and OpenMP;
* ``csrc/cuda/*.cu`` are compiled only when a CUDA toolkit *and* a CUDA build of torch
  are present.

Environment switches:
  ``GRAPHATTN_NO_EXT=1``    install pure Python (the reference path is used);
  ``GRAPHATTN_PORTABLE=1``  do not tune for the build machine (no ``-march=native``);
  ``GRAPHATTN_DEBUG=1``     ``-O0 -g`` for debugging kernels.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in {"1", "true", "yes", "on"}


def _extensions():
    if _flag("GRAPHATTN_NO_EXT"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = [os.path.join("csrc", "graphattn.cpp")]
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    with_cuda = bool(cuda_sources) and torch.version.cuda is not None and CUDA_HOME is not None

    opt = ["-O0", "-g"] if _flag("GRAPHATTN_DEBUG") else ["-O3"]
    if not _flag("GRAPHATTN_PORTABLE") and not _flag("GRAPHATTN_DEBUG"):
        opt.append("-march=native")
    # -fno-trapping-math lets the compiler if-convert (and so vectorise) the float compares of
    # LeakyReLU and the softmax; graphattn never relies on floating-point traps.
    cxx = ["-std=c++20", "-fopenmp", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas", *opt]
    define_macros: list[tuple[str, str | None]] = []
    extra = {"cxx": cxx}
    if with_cuda:
        define_macros.append(("WITH_CUDA", None))
        extra["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        ext = CUDAExtension(
            "graphattn._C",
            sources + cuda_sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "graphattn._C",
            sources,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define_macros,
            extra_compile_args=extra,
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
