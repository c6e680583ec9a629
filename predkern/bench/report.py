"""Runs the cases and writes REPORT.md, results.json and PNG plots; compares two results.json."""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import platform
import sys

import torch

import predkern
from predkern import backends
from predkern.bench import cases as case_defs
from predkern.bench import runner


def environment(device) -> dict:
    device = torch.device(device)
    info = dict(predkern=predkern.__version__, torch=torch.__version__, python=platform.python_version(),
                cuda=torch.version.cuda, triton=None, threads=torch.get_num_threads(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(), platform=platform.platform(),
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        pass
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    else:
        info["device_name"] = _cpu_name()
    info["device"] = device.type
    info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or "cpu"


class Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal): the cases
    finished, and what runs now (a torch.compile of a whole model takes minutes)."""

    def __init__(self, total: int):
        self.total, self.done, self.tty, self.label = total, 0, sys.stderr.isatty(), ""

    def start(self, label: str):
        self.label = label
        if self.tty:  # a log gets the notes that follow, each naming the case
            self.note("")

    def note(self, what: str):
        bar = "#" * (20 * self.done // self.total)
        line = f"[{bar:<20}] {self.done}/{self.total} done; {self.label}" + (f": {what}" if what else "")
        sys.stderr.write("\r\033[K" + line if self.tty else line + "\n")
        sys.stderr.flush()

    def finish(self):
        self.done += 1
        if self.done == self.total:
            self.label = "all"
            self.note("")
            if self.tty:
                sys.stderr.write("\n")


def run_all(device, shapes, op_names=None, backend_names=None, budget_s=1.0, compile=True,
            partial=None, modes=None) -> dict:
    """Runs every (case, mode) (of `modes` only, if given) and returns the report's data;
    `partial(data)`, if given, is called with the data so far after each, so that a run cut short
    still leaves its finished cases."""
    device = torch.device(device)
    unknown = set(modes or ()) - set(case_defs.TRAIN_MODES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; known: {case_defs.TRAIN_MODES}")
    selected = case_defs.cases(shapes, op_names)
    if modes:
        selected = [dataclasses.replace(c, modes=tuple(m for m in c.modes if m in modes)) for c in selected]
    names = case_defs.contenders(device.type, backend_names, compile)
    env = environment(device)
    env["cpu_allocator"] = runner.steady_cpu_allocator() if device.type == "cpu" else None
    if any(mode != "forward" for case in selected for mode in case.modes):
        env["autograd_floor_s"] = runner.autograd_floor(device)
    data = {"environment": env, "backends": backends.status(), "results": []}
    progress = Progress(sum(len(c.modes) for c in selected))
    sys.stderr.write(f"predkern bench on {device}: {len(selected)} case(s), {progress.total} (case, mode) run(s), "
                     f"contenders {', '.join(names)}"
                     + ("; torch.compile of a whole model's training iteration takes a minute or more the "
                        "first time (--no-compile leaves torch.compile out)"
                        if "compile" in names and any(c.op.endswith("_train") for c in selected) else "")
                     + "\n")
    for case in selected:
        clone = None
        for mode in case.modes:
            progress.start(f"{case.name} {mode}")
            rows = runner.run_group(case, names, mode, device, budget_s=budget_s * len(names), note=progress.note)
            progress.finish()
            if mode == "forward" and case.min_bytes:
                clone = clone or runner.clone_baseline(case.min_bytes, device)
                _bandwidth(rows, case.min_bytes, clone)
            data["results"] += rows
            if partial is not None:
                partial(data)
    return data


def _bandwidth(rows, min_bytes, clone):
    """GB/s of each timed row (the fewest bytes over its median time) and of the clone baseline."""
    for r in rows:
        if r["status"] == "ok":
            r["gbps"] = min_bytes / r["median_s"] / 1e9
            r["clone_gbps"] = min_bytes / clone["median_s"] / 1e9
            if r.get("device_s") and clone.get("device_s"):  # GPU: kernels alone
                r["device_gbps"] = min_bytes / r["device_s"] / 1e9
                r["clone_device_gbps"] = min_bytes / clone["device_s"] / 1e9


def _fmt_time(s):
    return f"{s * 1e3:.3f} ms" if s >= 1e-3 else f"{s * 1e6:.1f} us"


def _fmt_bytes(n):
    return "" if n is None else f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def _ratio(a, b):
    return f"{b / a:.2f}x" if a and b else ""


def markdown(data: dict) -> str:
    env = data["environment"]
    lines = ["# predkern benchmark report", "",
             f"Device: **{env['device_name']}** ({env['device']}). predkern {env['predkern']}, torch {env['torch']}, "
             f"triton {env['triton'] or 'absent'}, CUDA {env['cuda'] or 'none'}, python {env['python']}, "
             f"{env['threads']} threads, CPU capability {env['cpu_capability']}. {env['date']}.", "",
             "Median of many timed calls after warm-up, the contenders called in turn round by round (side "
             "by side), inputs rotated over random sets (3, or on a GPU enough to fill 3x its L2 cache when "
             "the op's bytes are known); each result was "
             "checked against the float64 reference first (max error over the output's scale, at most "
             f"{runner.TOLERANCE:g} in float32, {runner.TF32_TOLERANCE:g} where a GPU runs convolutions in "
             f"TF32 (PyTorch's default for cuDNN), {runner.AUTOCAST_TOLERANCE:g} under bf16 autocast; a wrong "
             "result is reported, not timed). *vs eager* / *vs compile* are speedups (>1 is faster). "
             "GB/s counts the fewest bytes a fused forward must move, against a `clone()` of as many bytes. "
             "Launches (device kernels per call), device time (the summed durations of a call's kernels, "
             "from the profiler, mean of 10 calls: the time without the host's cost per call), the device "
             "GB/s against a clone's device time, and peak memory (allocated at the peak of one call beyond "
             "what was allocated before it) are measured on a GPU only."
             + (f" CPU allocator for every contender: {env['cpu_allocator']} (so that one contender's frees do "
                "not make the next page-fault its allocations in anew)." if env.get("cpu_allocator") else "")
             + (f" Autograd floor here: {_fmt_time(env['autograd_floor_s'])} per `torch.autograd.grad` through "
                "one multiply of a 1-element tensor, part of every forward+backward time below (the autograd "
                "engine's own cost per backward call, whatever the op)." if env.get("autograd_floor_s") else ""),
             ""]
    rows = data["results"]
    for case in dict.fromkeys(r["case"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["case"] == case):
            group = [r for r in rows if r["case"] == case and r["mode"] == mode]
            dims = ", ".join(f"{k}={v}" for k, v in group[0]["dims"].items())
            base = {r["contender"]: r.get("median_s") for r in group}
            table = [_table_row(r, base) for r in group]
            # a column no contender fills (device time, launches, peak memory on a CPU) is left out
            columns = [c for c in table[0] if c in ("contender", "status") or any(row[c] for row in table)]
            lines += [f"## {case} ({dims}): {mode}", "",
                      "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table]
            lines.append("")
            for r in group:  # where predkern's device time goes, kernel by kernel (GPU only)
                if r["contender"].startswith("predkern") and r.get("kernels_s"):
                    lines += [f"{r['contender']} device time per call by kernel: {_kernel_summary(r['kernels_s'])}", ""]
    missing = {k: v for k, v in data["backends"].items() if v}
    if missing:
        lines += ["Backends not run here:", ""] + [f"- {k}: {v}" for k, v in missing.items()] + [""]
    return "\n".join(lines)


def summary(data: dict) -> str:
    """The medians of every case and mode, a column per contender, each with its speedup over
    eager: what `predkern bench` prints (REPORT.md has the rest)."""
    rows = data["results"]
    names = list(dict.fromkeys(r["contender"] for r in rows))
    lines = ["| case | mode | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for case in dict.fromkeys(r["case"] for r in rows):
        for mode in dict.fromkeys(r["mode"] for r in rows if r["case"] == case):
            group = {r["contender"]: r for r in rows if r["case"] == case and r["mode"] == mode}
            eager = group.get("eager", {}).get("median_s")
            cells = []
            for name in names:
                r = group.get(name)
                if r is None:
                    cells.append("")
                elif r["status"] != "ok":
                    cells.append(r["status"].upper())
                else:
                    ratio = _ratio(r["median_s"], eager)
                    cells.append(_fmt_time(r["median_s"]) + (f" ({ratio})" if ratio and name != "eager" else ""))
            lines.append(f"| {case} | {mode} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table_row(r: dict, base: dict) -> dict:
    """One contender's row of a case's table: column title -> cell text ('' where not measured)."""
    med = r.get("median_s")
    status = r["status"] if r["status"] == "ok" else f"**{r['status'].upper()}**: {r.get('error', '')}"
    if "compile_s" in r:
        status += f" (compiled in {r['compile_s']:.1f} s)"
    if "device_profile_error" in r:
        status += f" (no device time: {r['device_profile_error']})"
    return {
        "contender": r["contender"],
        "median": _fmt_time(med) if med else "",
        "vs eager": _ratio(med, base.get("eager")),
        "vs compile": _ratio(med, base.get("compile")),
        "GB/s (of clone)": f"{r['gbps']:.1f} ({100 * r['gbps'] / r['clone_gbps']:.0f}%)" if "gbps" in r else "",
        "device time": _fmt_time(r["device_s"]) if r.get("device_s") else "",
        "device GB/s (of clone)": (f"{r['device_gbps']:.0f} ({100 * r['device_gbps'] / r['clone_device_gbps']:.0f}%)"
                                   if "device_gbps" in r else ""),
        "saved for backward": _fmt_bytes(r.get("saved_bytes")),
        "launches": str(r.get("launches") or ""),
        "peak memory": _fmt_bytes(r.get("peak_bytes")),
        "max error": f"{r['max_rel_error']:.1e}" if "max_rel_error" in r else "",
        "status": status,
    }


def _kernel_name(name: str) -> str:
    """A profiler's kernel name, short: `void ns::k<float, int>(Args)` -> `k`; a mangled or
    library name cut at 48 characters."""
    base = name.removeprefix("void ").split("(")[0].split("<")[0].split("::")[-1]
    return base if len(base) <= 48 else base[:47] + "..."


def _kernel_summary(kernels_s: dict, top: int = 6) -> str:
    """The `top` kernels by device time (names shortened, same short names added up), then the rest."""
    merged = {}
    for name, t in kernels_s.items():
        short = _kernel_name(name)
        merged[short] = merged.get(short, 0.0) + t
    ranked = sorted(merged.items(), key=lambda kv: -kv[1])
    parts = [f"`{name}` {_fmt_time(t)}" for name, t in ranked[:top]]
    if len(ranked) > top:
        parts.append(f"{len(ranked) - top} others {_fmt_time(sum(t for _, t in ranked[top:]))}")
    return ", ".join(parts)


def plots(data: dict, out_dir: str) -> list[str]:
    """speedup.png (vs eager, per case and mode) and time_vs_size.png (a panel per op timed at
    several sizes); needs matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    ok = [r for r in data["results"] if r["status"] == "ok"]
    written = []
    # one row per (case, mode), top to bottom in the report's order, a bar per contender; a log
    # axis, as speedups run from below 1x to tens
    labels = list(dict.fromkeys(f"{r['case']} {r['mode']}" for r in ok))
    contenders = [c for c in dict.fromkeys(r["contender"] for r in ok) if c != "eager"]
    eager = {f"{r['case']} {r['mode']}": r["median_s"] for r in ok if r["contender"] == "eager"}
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.22 * len(labels) * max(1, len(contenders))))
    height = 0.8 / max(1, len(contenders))
    for j, name in enumerate(contenders):
        by = {f"{r['case']} {r['mode']}": r["median_s"] for r in ok if r["contender"] == name}
        ys = [i + j * height for i, lab in enumerate(labels) if lab in by and lab in eager]
        xs = [eager[lab] / by[lab] for lab in labels if lab in by and lab in eager]
        ax.barh(ys, xs, height, label=name)
    ax.set_xscale("log")
    ticks = [2.0 ** k for k in range(-5, 8)]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks], fontsize=7)
    ax.minorticks_off()
    ax.set_xlim(left=min([0.9] + [p.get_width() / 1.5 for p in ax.patches]))
    ax.axvline(1.0, color="gray", lw=0.8)
    ax.set_yticks([i + height * (len(contenders) - 1) / 2 for i in range(len(labels))], labels, fontsize=7)
    ax.set_ylim(len(labels) - height / 2, -height * 1.5 if labels else 1)  # the first case on top
    ax.set_xlabel("speedup over eager PyTorch (log scale; > 1 is faster)")
    ax.set_title(f"predkern on {data['environment']['device_name']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", lw=0.3, alpha=0.5)
    fig.tight_layout()
    path = os.path.join(out_dir, "speedup.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)

    # one panel per op timed at two sizes or more
    sizes = {}
    for r in ok:
        if r["op"] in TIME_VS_SIZE_OPS:
            sizes.setdefault(r["op"], set()).add(_elements(r["dims"]))
    ops = [op for op, n in sizes.items() if len(n) > 1]
    if not ops:
        return written
    cols = min(3, len(ops))
    rows = -(-len(ops) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[len(ops):]:
        ax.set_visible(False)
    names = list(dict.fromkeys(r["contender"] for r in ok))
    for ax, op in zip(axes.flat, ops):
        for mode, style, fill in (("forward", "-", None), ("forward+backward", "--", "none")):
            for k, name in enumerate(names):  # a colour per contender; per mode a line style and a marker
                pts = sorted((_elements(r["dims"]), r["median_s"]) for r in ok
                             if r["contender"] == name and r["mode"] == mode and r["op"] == op)
                if len(pts) > 1:
                    ax.loglog(*zip(*pts), style, marker="o", markerfacecolor=fill, color=f"C{k}",
                              label=f"{name} {mode}")
        ax.set_xlabel("elements per call (terms * B * C * H * W)")
        ax.set_ylabel("median time per call (s)")
        ax.set_title(f"{op}: time against problem size", fontsize=9)
        ax.legend(fontsize=7, handlelength=3.5)  # long enough to show the dashes
    fig.tight_layout()
    path = os.path.join(out_dir, "time_vs_size.png")
    fig.savefig(path, dpi=120)
    written.append(path)
    plt.close(fig)
    return written


# the ops whose size is their elements per call (a cell step or a model also varies k, layers, T)
TIME_VS_SIZE_OPS = ("convlstm_gates", "stlstm_memory", "stlstm_output", "decoupling_loss", "prednet_error")


def _elements(dims):
    n = 1
    for key in ("terms", "B", "C", "H", "W"):
        n *= dims.get(key, 1)
    return n


def write(data: dict, out_dir: str, with_plots: bool = True) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = [os.path.join(out_dir, "results.json"), os.path.join(out_dir, "REPORT.md")]
    with open(paths[0], "w") as f:
        json.dump(data, f, indent=1)
    with open(paths[1], "w") as f:
        f.write(markdown(data))
    return paths + (plots(data, out_dir) if with_plots else [])


def compare(path_a: str, path_b: str) -> str:
    """A table of median times of run A against run B for every (case, mode, contender) in both."""
    with open(path_a) as f:
        a = json.load(f)
    with open(path_b) as f:
        b = json.load(f)
    key = lambda r: (r["case"], r["mode"], r["contender"])  # noqa: E731
    bm = {key(r): r for r in b["results"] if r["status"] == "ok"}
    lines = [f"A: {path_a} ({a['environment']['device_name']}, {a['environment']['date']})",
             f"B: {path_b} ({b['environment']['device_name']}, {b['environment']['date']})", "",
             "| case | mode | contender | A | B | B vs A |", "|---|---|---|---|---|---|"]
    for r in a["results"]:
        other = bm.get(key(r))
        if r["status"] == "ok" and other:
            lines.append(f"| {r['case']} | {r['mode']} | {r['contender']} | {_fmt_time(r['median_s'])} | "
                         f"{_fmt_time(other['median_s'])} | {r['median_s'] / other['median_s']:.2f}x |")
    return "\n".join(lines)
