"""Builds predkern._C against the torch that is already installed.

The CPU kernels always build. The CUDA kernels build where torch has CUDA and nvcc is found;
PREDKERN_CUDA=0 skips them, PREDKERN_CUDA=1 forces them (e.g. on a build machine without a GPU).
Install with `pip install --no-build-isolation .` so pip does not pull a second torch into an
isolated build environment (pyproject.toml deliberately does not list torch as a build dependency).
"""
import glob
import os

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda(torch, cuda_home):
    switch = os.environ.get("PREDKERN_CUDA", "auto").lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if switch in ("1", "true", "yes", "on"):
        if torch.version.cuda is None or cuda_home is None:
            raise RuntimeError("PREDKERN_CUDA=1 but torch has no CUDA or nvcc (CUDA_HOME) is missing")
        return True
    return torch.version.cuda is not None and cuda_home is not None


def _extensions():
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, CppExtension, CUDAExtension

    sources = [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")))]
    sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    # OpenMP: at::parallel_for is inline. No contraction of a * b + c into an fma: eager rounds the
    # product first, and an fma keeps an overflowing product finite (inf - inf is NaN in eager).
    cxx = ["-O3", "-std=c++20", "-fopenmp", "-ffp-contract=off", "-Wno-psabi"]
    args = dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])
    if _want_cuda(torch, CUDA_HOME):
        sources += [os.path.relpath(p, ROOT) for p in sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
        nvcc = ["-O3", "-std=c++17", "-DPREDKERN_WITH_CUDA"]
        return [CUDAExtension("predkern._C", sources, define_macros=[("PREDKERN_WITH_CUDA", None)],
                              extra_compile_args={"cxx": cxx, "nvcc": nvcc}, **args)]
    return [CppExtension("predkern._C", sources, extra_compile_args={"cxx": cxx}, **args)]


def _torch_requirement():
    """The compiled extension links against this torch's C++ ABI, which changes between minor
    versions: the package requires the minor version it was built with."""
    import torch

    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return f"torch>={major}.{minor},<{major}.{minor + 1}"


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    class BuildExt(BuildExtension.with_options(no_python_abi_suffix=False)):
        """Every build of this checkout (editable, wheel, build_ext --inplace) keeps its objects in
        build/temp, where setuptools gives an editable build a fresh temporary directory: ninja then
        recompiles only what changed, and a wheel built after an editable install reuses its objects.
        An explicit --build-temp still wins."""

        def finalize_options(self):
            if self.build_temp is None:
                self.build_temp = os.path.join(ROOT, "build", "temp")
            super().finalize_options()

    return BuildExt


setup(
    packages=find_packages(include=["predkern", "predkern.*"]),
    install_requires=[_torch_requirement()],
    ext_modules=_extensions(),
    cmdclass={"build_ext": _build_ext()},
)
