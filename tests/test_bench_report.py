"""The report generator on a tiny config: its outputs parse, and a wrong backend is caught."""
import dataclasses
import json
import os

import pytest
import torch

from predkern.bench import cases, report, runner


def test_report_on_tiny_config(tmp_path):
    seen = []  # rows so far, after each (case, mode): a run cut short keeps what it finished
    data = report.run_all("cpu", ["tiny"], budget_s=0.02, partial=lambda d: seen.append(len(d["results"])))
    assert seen == sorted(seen) and seen[-1] == len(data["results"])
    assert len(seen) == sum(len(c.modes) for c in cases.cases(["tiny"]))
    paths = report.write(data, str(tmp_path))
    with open(tmp_path / "results.json") as f:
        loaded = json.load(f)
    rows = loaded["results"]
    assert {r["contender"] for r in rows} >= {"eager", "compile"}
    assert {r["mode"] for r in rows} == set(cases.MODES)
    for r in rows:
        assert r["status"] == "ok", r
        assert len(r["samples_s"]) >= 10 and r["median_s"] > 0
    md = (tmp_path / "REPORT.md").read_text()
    assert "convlstm_gates[tiny]" in md and "vs compile" in md and loaded["environment"]["torch"] in md
    if not torch.cuda.is_available():  # columns measured on a GPU only are left out, not left empty
        assert "| launches |" not in md and "| device time |" not in md and "| peak memory |" not in md
    assert loaded["environment"]["autograd_floor_s"] > 0 and "Autograd floor here" in md
    if loaded["environment"]["cpu_allocator"]:  # glibc: said in the report
        assert loaded["environment"]["cpu_allocator"] in md
    assert all(os.path.exists(p) for p in paths)
    compared = report.compare(str(tmp_path / "results.json"), str(tmp_path / "results.json"))
    assert "1.00x" in compared


def test_wrong_result_is_reported_not_timed():
    case = cases.cases(["tiny"])[0]
    broken = dataclasses.replace(case, fused=lambda **kw: tuple(t + 1e-3 for t in case.fused(**kw)))
    wrong, right = runner.run_group(broken, ["predkern-cpu", "eager"], "forward", "cpu", budget_s=0.01)
    assert wrong["status"] == "wrong" and "samples_s" not in wrong
    assert right["status"] == "ok" and right["samples_s"]
    row = wrong
    assert "WRONG" in report.markdown({"environment": report.environment("cpu"), "backends": {},
                                       "results": [row]})


@pytest.mark.parametrize("op", ["predrnn_v2_train", "convlstm_train", "prednet_train"])
def test_training_iteration_case_is_checked_and_timed(op):
    """predkern's model's training iteration against the peer's plain model, same weights."""
    (case,) = cases.cases(["small"], [op])
    assert case.modes == cases.TRAIN_MODES
    rows = runner.run_group(case, ["eager", "predkern-cpu"], "forward+backward", "cpu", budget_s=0.01, min_repeats=2)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["max_rel_error"] <= runner.TOLERANCE and row["samples_s"]


def test_autocast_mode_runs_the_models_in_bf16_and_checks_them_against_float64():
    """Under bf16 autocast both models run their convs in bf16 (so they differ from the float64
    reference by more than float32 would, yet within AUTOCAST_TOLERANCE); a model off by 10% is
    still caught."""
    (case,) = cases.cases(["small"], ["predrnn_v2_train"])
    rows = runner.run_group(case, ["eager", "predkern-cpu"], cases.AUTOCAST, "cpu", budget_s=0.01, min_repeats=2)
    for row in rows:
        assert row["status"] == "ok", row
        assert runner.TOLERANCE < row["max_rel_error"] <= runner.AUTOCAST_TOLERANCE, row
    off = dataclasses.replace(case, fused=lambda **kw: case.fused(**kw) * 1.1)
    (row,) = runner.run_group(off, ["predkern-cpu"], cases.AUTOCAST, "cpu", budget_s=0.01, min_repeats=2)
    assert row["status"] == "wrong", row


def test_cli_selects_writes_and_compares(tmp_path, capsys):
    """`predkern bench` with --shapes/--ops/--backends/--out, twice, then --compare of the two."""
    from predkern import cli

    runs = []
    for name, extra, contenders in (("a", [], {"eager", "compile", "predkern-cpu"}),
                                    ("b", ["--no-compile"], {"eager", "predkern-cpu"})):
        out = tmp_path / name
        argv = ["bench", "--device", "cpu", "--shapes", "tiny,small", "--ops", "convlstm_gates",
                "--backends", "cpu", "--budget", "0.01", "--out", str(out), *extra]
        assert cli.main(argv) == 0
        with open(out / "results.json") as f:
            rows = json.load(f)["results"]
        assert {r["case"] for r in rows} == {"convlstm_gates[tiny]", "convlstm_gates[small]"}
        assert {r["contender"] for r in rows} == contenders
        assert all(r["status"] == "ok" and r["peak_bytes"] is None for r in rows)  # no GPU peak on a CPU
        assert (out / "speedup.png").exists() and (out / "time_vs_size.png").exists()
        runs.append(str(out / "results.json"))
    printed = capsys.readouterr().out  # a table of medians per case and mode, not the whole report
    assert printed.count("| convlstm_gates[tiny] | forward") == 2 * 2 and "REPORT.md" in printed
    assert "# predkern benchmark report" not in printed
    assert cli.main(["bench", "--compare", *runs]) == 0
    table = capsys.readouterr().out
    assert table.count("| convlstm_gates[") == 2 * 2 * 2  # 2 shapes x 2 modes x the 2 contenders in both


def test_cli_runs_only_the_modes_asked_for(tmp_path):
    from predkern import cli

    argv = ["bench", "--device", "cpu", "--shapes", "small", "--ops", "predrnn_v2_train", "--no-compile",
            "--modes", f"forward,{cases.AUTOCAST}", "--budget", "0.01", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    with open(tmp_path / "results.json") as f:
        rows = json.load(f)["results"]
    assert {r["mode"] for r in rows} == {"forward", cases.AUTOCAST}
    with pytest.raises(SystemExit):
        cli.main(["bench", "--modes", "backward", "--out", str(tmp_path)])


def test_gpu_columns_show_device_time_and_its_bandwidth():
    """A GPU row's device time and device GB/s (against a clone's) get their own columns; a row
    whose profile failed says so."""
    env = report.environment("cpu")
    common = dict(case="c", op="prednet_error", shape="s", dims={"B": 1}, mode="forward", status="ok",
                  median_s=4e-5, samples_s=[4e-5], gbps=100.0, clone_gbps=200.0)
    rows = [dict(common, contender="eager", device_s=2e-5, device_gbps=1000.0, clone_device_gbps=4000.0),
            dict(common, contender="predkern-cuda", device_s=5e-6, device_gbps=3600.0, clone_device_gbps=4000.0,
                 kernels_s={"void ns::mean_kernel<float>(double const*, long, float*)": 1e-6,
                            "void ns::rows_kernel<float, int>(ns::RowArgs<float, int>)": 3e-6,
                            "void ns::rows_kernel<float, long>(ns::RowArgs<float, long>)": 1e-6}),
            dict(common, contender="predkern-triton", device_profile_error="RuntimeError: boom")]
    md = report.markdown({"environment": env, "backends": {}, "results": rows})
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "| device time | device GB/s (of clone) |" in table[0]
    assert all(line.count("|") == table[0].count("|") for line in table)
    assert "| 5.0 us | 3600 (90%) |" in table[3]
    assert "no device time: RuntimeError: boom" in table[4]
    # the predkern rows' kernels, slowest first
    assert "predkern-cuda device time per call by kernel: `rows_kernel` 4.0 us, `mean_kernel` 1.0 us" in md
    many = {f"k{i}": (10 - i) * 1e-6 for i in range(8)}
    assert report._kernel_summary(many, top=2) == "`k0` 10.0 us, `k1` 9.0 us, 6 others 33.0 us"


def test_rotation_keeps_three_sets_on_a_cpu():
    assert runner.rotation(10, "cpu") == runner.rotation(None, "cpu") == 3


@pytest.mark.parametrize("argv,message", [
    (["--ops", "convlstm"], "unknown ops"),
    (["--shapes", "huge"], "unknown shapes"),
    (["--backends", "cudnn"], "unknown backends"),
    (["--backends", "cuda", "--device", "cpu"], "cannot run on cpu"),
    (["--device", "gpu"], "--device must be cpu or cuda"),
    (["--device", "mps"], "--device must be cpu or cuda"),
    pytest.param(["--device", "cuda"], "no CUDA GPU here",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here")),
])
def test_cli_refuses_unknown_selections_before_timing(argv, message, capsys):
    from predkern import cli

    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--shapes", "tiny", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.gpu
def test_gpu_rows_count_launches_and_peak_memory():
    (case,) = cases.cases(["tiny"], ["convlstm_gates"])
    for mode in cases.MODES:
        rows = runner.run_group(case, ["eager", "predkern-cuda"], mode, "cuda", budget_s=0.01)
        for row in rows:
            assert row["status"] == "ok", row
            assert isinstance(row["launches"], int) and row["launches"] >= 1
            assert isinstance(row["peak_bytes"], int) and row["peak_bytes"] > 0
            assert 0 < row["device_s"] < row["median_s"] * 10, row
        eager, fused = rows
        assert fused["launches"] < eager["launches"]
    # a small op rotates over enough input sets to fill 3x the L2 cache
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    assert rows[0]["input_sets"] * case.min_bytes >= min(3 * l2, 64 * case.min_bytes)
    clone = runner.clone_baseline(2**24, "cuda")
    assert 0 < clone["device_s"] <= clone["median_s"] * 1.5
