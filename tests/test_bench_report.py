"""The report generator on a tiny config: its outputs parse, and a wrong backend is caught."""
import dataclasses
import json
import os

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


def test_training_iteration_case_is_checked_and_timed():
    """predkern's PredRNN-V2 training iteration against thuml's plain model, same weights."""
    (case,) = cases.cases(["small"], ["predrnn_v2_train"])
    rows = runner.run_group(case, ["eager", "predkern-cpu"], "forward+backward", "cpu", budget_s=0.01, min_repeats=2)
    for row in rows:
        assert row["status"] == "ok", row
        assert row["max_rel_error"] <= runner.TOLERANCE and row["samples_s"]
