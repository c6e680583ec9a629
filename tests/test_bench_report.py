"""The report generator on a tiny config: its outputs parse, and a wrong backend is caught."""
import dataclasses
import json
import os

import pytest

from predkern.bench import cases, report, runner


def test_report_on_tiny_config(tmp_path):
    data = report.run_all("cpu", ["tiny"], budget_s=0.02)
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
    rows = runner.run_group(case, ["eager", "predkern-cpu"], "forward+backward", "cpu", budget_s=0.01, min_repeats=2)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["max_rel_error"] <= runner.TOLERANCE and row["samples_s"]


def test_cli_selects_writes_and_compares(tmp_path, capsys):
    """`predkern bench` with --shapes/--ops/--backends/--out, twice, then --compare of the two."""
    from predkern import cli

    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        argv = ["bench", "--device", "cpu", "--shapes", "tiny,small", "--ops", "convlstm_gates",
                "--backends", "cpu", "--budget", "0.01", "--out", str(out)]
        assert cli.main(argv) == 0
        with open(out / "results.json") as f:
            rows = json.load(f)["results"]
        assert {r["case"] for r in rows} == {"convlstm_gates[tiny]", "convlstm_gates[small]"}
        assert {r["contender"] for r in rows} == {"eager", "compile", "predkern-cpu"}
        assert all(r["status"] == "ok" and r["peak_bytes"] is None for r in rows)  # no GPU peak on a CPU
        assert (out / "speedup.png").exists() and (out / "time_vs_size.png").exists()
        runs.append(str(out / "results.json"))
    capsys.readouterr()
    assert cli.main(["bench", "--compare", *runs]) == 0
    table = capsys.readouterr().out
    assert table.count("| convlstm_gates[") == 2 * 2 * 3  # 2 shapes x 2 modes x 3 contenders


@pytest.mark.parametrize("argv,message", [
    (["--ops", "convlstm"], "unknown ops"),
    (["--shapes", "huge"], "unknown shapes"),
    (["--backends", "cudnn"], "unknown backends"),
    (["--backends", "cuda", "--device", "cpu"], "cannot run on cpu"),
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
        eager, fused = rows
        assert fused["launches"] < eager["launches"]
