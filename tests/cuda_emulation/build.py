"""Builds instrumented copies of the predkern package: the CUDA kernels emulated on the CPU, and
the CPU kernels under AddressSanitizer.

    python tests/cuda_emulation/build.py OUT_DIR

OUT_DIR/<variant>/predkern is then the package with an extension linked from the torch glue
(csrc/*.cpp) and, per variant:
  index32   copies of csrc/cuda/*.cu compiled by g++ against the emulated runtime (cuda_runtime.h
            here, each `<<<...>>>` launch rewritten as a call), and entry_points.cpp in place of
            the CPU kernels, so CPU tensors run the CUDA kernels;
  index64   the same on the 64-bit index path for every tensor (PREDKERN_CUDA_INDEX64_ONLY), which
            only tensors past 2^31 elements take otherwise;
  asan      index32 with AddressSanitizer in the kernels: an access past a tensor aborts, naming
            the line;
  cpu_asan  the CPU kernels (csrc/cpu) under AddressSanitizer.
The asan variants are built only where the compiler has the runtime; a Python that loads one
needs asan_environment(). tests/test_cuda_emulation.py runs the cpu backend's tests on each.
"""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CSRC = os.path.join(ROOT, "csrc")
# variant -> (kernels, defines in each emulated CUDA unit, kernel units' extra flags, link flags)
ASAN = ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"]
VARIANTS = {
    "index32": ("cuda", "", [], []),
    "index64": ("cuda", "#define PREDKERN_CUDA_INDEX64_ONLY 1\n", [], []),
    # -O1, as AddressSanitizer's docs advise: the emulated kernels run slowly enough already
    "asan": ("cuda", "", ["-O1", *ASAN], ["-fsanitize=address"]),
    # -O0: the CPU kernels' vector units (at::vec, once per instruction set) compiled in 55, 46 and
    # 35 s at -O1, 9 to 11 s at -O0; the op tests run as fast either way (small tensors)
    "cpu_asan": ("cpu", "", ["-O0", *ASAN, "-fopenmp"], ["-fsanitize=address", "-fopenmp"]),
}

# kernel<...><<<grid, block, smem, stream>>>(  ->  ::pk_emu::launch(kernel<...>, grid, block, smem, stream)(
LAUNCH = re.compile(r"(\w+_kernel)(<.*?>)?\s*<<<(.*?)>>>\(", re.S)


def cuda_include_dir():
    """The CUDA toolkit's include directory (for cuda_fp16.h and cuda_bf16.h), or None."""
    candidates = [os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    for c in candidates:
        if c and os.path.exists(os.path.join(c, "include", "cuda_fp16.h")):
            return os.path.join(c, "include")
    return None


def asan_library():
    """The compiler's AddressSanitizer runtime, or None."""
    try:
        path = subprocess.run(["c++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return None
    return path if os.path.isabs(path) and os.path.exists(path) else None


def asan_environment():
    """Environment for a Python that loads an asan variant: the runtime preloaded (with libstdc++,
    whose exceptions it intercepts), leaks and fiber-stack checks off (Python's and ucontext's)."""
    stdcxx = subprocess.run(["c++", "-print-file-name=libstdc++.so"], capture_output=True, text=True).stdout.strip()
    return {"LD_PRELOAD": f"{asan_library()} {stdcxx}",
            "ASAN_OPTIONS": "detect_leaks=0:detect_stack_use_after_return=0"}


def rewrite_launches(src: str) -> str:
    expected = src.count("<<<")
    out, n = LAUNCH.subn(lambda m: f"::pk_emu::launch({m.group(1)}{m.group(2) or ''}, {m.group(3)})(", src)
    if n != expected:
        raise RuntimeError(f"rewrote {n} of {expected} kernel launches")
    return out


def main(out_dir: str) -> None:
    from torch.utils import cpp_extension

    cuda_inc = cuda_include_dir()
    if cuda_inc is None:
        raise SystemExit("no CUDA toolkit headers (cuda_fp16.h) found")
    build = os.path.join(out_dir, "build")
    os.makedirs(build, exist_ok=True)
    # As torch.utils.cpp_extension builds an extension, without loading it into this process.
    includes = [HERE, CSRC, os.path.join(CSRC, "cuda"), cuda_inc]
    cflags = ["-O2", "-std=c++20", "-fPIC", "-ffp-contract=off", "-Wno-psabi",
              "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H"]
    cflags += [f"-I{d}" for d in includes]
    for d in cpp_extension.include_paths() + [sysconfig.get_paths()["include"]]:
        cflags += ["-isystem", d]
    ldflags = ["-shared"] + [f"-L{d}" for d in cpp_extension.library_paths()]
    ldflags += ["-lc10", "-ltorch_cpu", "-ltorch", "-ltorch_python"]

    glue = [os.path.join(CSRC, n) for n in sorted(os.listdir(CSRC)) if n.endswith(".cpp")]
    units = {"glue": (glue, []), "entry_points": ([os.path.join(HERE, "entry_points.cpp")], [])}
    variants = {k: v for k, v in VARIANTS.items() if not v[2] or asan_library()}
    for variant, (kernels, defines, flags, _) in variants.items():
        os.makedirs(os.path.join(build, variant), exist_ok=True)
        if kernels == "cpu":
            units[variant] = ([os.path.join(CSRC, "cpu", n) for n in sorted(os.listdir(os.path.join(CSRC, "cpu")))
                               if n.endswith(".cpp")], flags)
            continue
        units[variant] = ([], flags)
        for name in sorted(os.listdir(os.path.join(CSRC, "cuda"))):
            if name.endswith(".cu"):
                with open(os.path.join(CSRC, "cuda", name)) as f:
                    text = rewrite_launches(f.read())
                path = os.path.join(build, variant, name[:-3] + "_cuda.cpp")
                with open(path, "w") as f:
                    # PREDKERN_WITH_CUDA declares the *_cuda entry points in the op headers.
                    f.write('#define PREDKERN_WITH_CUDA 1\n' + defines + '#include "cuda_runtime.h"\n')
                    f.write(f'#line 1 "{os.path.join(CSRC, "cuda", name)}"\n' + text)
                units[variant][0].append(path)

    def compile_unit(job):
        src, obj, extra = job
        r = subprocess.run(["c++", *cflags, *extra, "-c", src, "-o", obj], capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"compiling {src} failed:\n{r.stderr[-6000:]}")
        return obj

    objects, jobs = {}, []
    for unit, (sources, flags) in units.items():
        os.makedirs(os.path.join(build, unit), exist_ok=True)
        for src in sources:
            obj = os.path.join(build, unit, os.path.basename(src).rsplit(".", 1)[0] + ".o")
            objects.setdefault(unit, []).append(obj)
            jobs.append((src, obj, flags))
    jobs.sort(key=lambda job: "-fsanitize=address" not in job[2])  # the slowest units first
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        list(pool.map(compile_unit, jobs))

    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for variant, (kernels, _, _, link) in variants.items():
        pkg = os.path.join(out_dir, variant, "predkern")
        shutil.rmtree(pkg, ignore_errors=True)
        shutil.copytree(os.path.join(ROOT, "predkern"), pkg,
                        ignore=shutil.ignore_patterns("__pycache__", "_C*.so", "_C*.pyd"))
        objs = objects["glue"] + (objects["entry_points"] if kernels == "cuda" else []) + objects[variant]
        subprocess.run(["c++", *objs, *ldflags, *link, "-o", os.path.join(pkg, "_C" + suffix)], check=True)
        print(f"predkern ({variant}) in {pkg}")


if __name__ == "__main__":
    main(sys.argv[1])
