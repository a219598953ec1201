"""End to end: analyze, resume, compare, results.json schema, report, CLI."""
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

import modprobe as mp
from modprobe import cli
from modprobe.fitting import FitConfig

sys.path.insert(0, str(Path(__file__).parent))
from _planted import planted_model, planted_task  # noqa: E402

CONFIG = mp.AnalysisConfig(fit=FitConfig(finetune=False, epochs=20), mask_epochs=20, n_random=80,
                           complement=False, probe_cv=3, erasure=True, erasure_random=40,
                           progress=False)


@pytest.fixture(scope="module")
def planted():
    return planted_model(), planted_task()


@pytest.fixture(scope="module")
def analysis(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    return mp.analyze(planted[0], planted[1], out=out, config=CONFIG)


def check_schema(results):
    """The documented results.json schema, version 2 (README: 'results.json')."""
    assert results["schema_version"] == 2 and results["kind"] == "analysis"
    for key, kind in {"label": str, "created": str, "versions": dict, "config": dict, "model": dict,
                      "task": dict, "fit": dict, "subnetworks": dict, "ablation": dict,
                      "probes": dict, "scalars": dict, "verdict": dict}.items():
        assert isinstance(results[key], kind), key
    assert set(results["scalars"]) == {"task_metric", "density", "isolation", "decodability"}
    assert {"text", "isolated", "verdicts", "evidence"} <= set(results["verdict"])
    stages = {"fit", "masks", "twin", "ablation", "probes"}
    assert set(results["timings"]) == stages | ({"erasure"} if results["config"]["erasure"] else set())
    for sub in results["subnetworks"].values():
        assert 0 <= sub["density"] <= 1 and all(0 <= d <= 1 for d in sub["densities"].values())
    for row in results["ablation"]["rows"]:
        assert {"subnetwork", "eval_task", "condition", "metric", "value", "ci_low", "ci_high",
                "p_value"} <= set(row)
    for row in results["probes"]["rows"]:
        assert {"hook", "constituent", "accuracy", "ci_low", "ci_high", "control_accuracy",
                "selectivity", "baseline"} <= set(row)
    json.dumps(results)  # plain JSON all the way down


def test_planted_modular_model_is_judged_isolated_and_results_follow_the_schema(analysis):
    results = json.loads((analysis.out / "results.json").read_text())
    check_schema(results)
    assert results["verdict"]["isolated"] == {"A": True, "B": True}


def test_sub_steps_are_timed_in_results_summary_and_report(analysis):
    results = json.loads((analysis.out / "results.json").read_text())
    masks = results["timings"]["masks"]["steps"]
    lambdas = len(CONFIG.mask_lambda)
    for name in "AB":  # a mask per subroutine and λ
        assert sum(s["step"].startswith(f"mask {name} l0_lambda=") for s in masks) == lambdas
    assert any("necessity round" in s["step"] for s in masks)
    assert all(s["wall_s"] >= 0 and s["cpu_s"] >= 0 and s["epochs"] >= 1 for s in masks)
    assert any("random_ablate" in s["step"] for s in results["timings"]["ablation"]["steps"])
    assert results["mask_targets"]["scope"] in ("all", "upper")
    summary = analysis.summary()
    assert "masked: " in summary and "masks: mask A" in summary
    report = (analysis.out / "report.html").read_text()
    assert "Time per stage and sub-step" in report and "random_ablate" in report
    assert analysis.scalars["isolation"] > 0.2
    assert results["fit"]["test"] > 0.9 and not results["fit"]["head"]
    assert analysis.verdict.startswith("Modular")


def test_rerun_with_the_same_out_resumes_every_stage(planted, analysis, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("a finished stage was recomputed")

    for module, name in [(mp.pruning, "train_subnetworks"), (mp.ablation, "run"),
                         (mp.probes, "decodability")]:
        monkeypatch.setattr(module, name, boom)
    again = mp.analyze(planted[0], planted[1], out=analysis.out, config=CONFIG)
    assert again.scalars == analysis.scalars
    assert again.results["ablation"] == analysis.results["ablation"]


def test_an_interrupted_stage_leaves_no_partial_file_and_the_rerun_completes(planted, tmp_path,
                                                                          monkeypatch):
    real_run = mp.ablation.run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(mp.ablation, "run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mp.analyze(planted[0], planted[1], out=tmp_path, config=CONFIG)
    files = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert "stages/fit.json" in files and "stages/masks.done" in files
    assert not any("ablation" in f or "results" in f or f.endswith(".tmp") for f in files)
    monkeypatch.setattr(mp.ablation, "run", real_run)
    monkeypatch.setattr(mp.pruning, "train_subnetworks",
                        lambda *a, **k: pytest.fail("masks were already trained"))
    done = mp.analyze(planted[0], planted[1], out=tmp_path, config=CONFIG)
    assert (tmp_path / "results.json").exists() and done.results["verdict"]["isolated"]["A"]
    timings = done.results["timings"]
    assert timings["masks"] == {"wall_s": 0.0, "cpu_s": 0.0, "resumed": True}
    assert not timings["ablation"]["resumed"] and timings["ablation"]["wall_s"] > 0
    assert "stage times: fit" in done.summary()


def test_resuming_with_another_configuration_is_refused(planted, analysis):
    other = mp.AnalysisConfig(seed=1, progress=False)
    with pytest.raises(ValueError, match="another model, task or configuration"):
        mp.analyze(planted[0], planted[1], out=analysis.out, config=other)


def test_resuming_after_the_pruning_defaults_changed_is_refused(planted, analysis, monkeypatch):
    """The fingerprint covers the MaskConfig defaults the AnalysisConfig leaves open, so masks
    trained under old library defaults are never silently reused."""
    original = mp.pruning.MaskConfig

    def other_defaults(**kwargs):
        return original(**{"init": 0.5, **kwargs})
    monkeypatch.setattr(mp.analysis.pruning, "MaskConfig", other_defaults)
    with pytest.raises(ValueError, match="another model, task or configuration"):
        mp.analyze(planted[0], planted[1], out=analysis.out, config=CONFIG)


def test_compare_finds_the_planted_model_more_isolated_than_its_random_twins(planted, tmp_path):
    cmp = mp.compare(planted[0], planted[1], seeds=(0, 1, 2), out=tmp_path, config=CONFIG)
    iso = {r["metric"]: r for r in cmp.report.rows}["isolation"]
    assert all(p.scalars["isolation"] > r.scalars["isolation"] + 0.2
               for p, r in zip(cmp.pretrained, cmp.random))
    assert iso["ci_low"] > 0 and cmp.verdict.startswith("Pretrained subnetworks are more isolated")
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["kind"] == "comparison" and len(results["random"]) == 3
    for run in results["pretrained"] + results["random"]:
        check_schema(run)
    assert (tmp_path / "random-seed1" / "results.json").exists()


def test_report_is_one_self_contained_file_with_every_figure(analysis):
    text = (analysis.out / "report.html").read_text()
    assert text.count("<script type=\"text/javascript\">") == 1  # plotly.js embedded once
    assert not re.search(r"<script[^>]+src=", text)  # nothing fetched from the network
    for heading in ["Verdict", "Mask density per layer", "Overlap between subnetworks",
                    "Subnetwork graph", "Ablation effects", "Random-control distribution",
                    "Probe selectivity", "Probe compression (MDL)", "Erasure effects",
                    "Configuration and versions"]:
        assert f"<h2>{heading}</h2>" in text
    assert text.index("<h2>Verdict</h2>") < text.index("<h2>Mask density per layer</h2>")


def test_erasing_a_subroutines_own_constituent_hurts_it_beyond_random_directions(analysis):
    """The planted task's constituents are the subroutines' own labels: erasing A's label where
    branch A computes it must hurt A beyond random directions; erasing B's label must not."""
    rows = analysis.results["erasure"]["rows"]
    assert {(r["subroutine"], r["constituent"]) for r in rows} == {
        (s, c) for s in "AB" for c in "AB"}
    for sub, other in (("A", "B"), ("B", "A")):
        own = max((r for r in rows if r["subroutine"] == sub and r["constituent"] == sub),
                  key=lambda r: r["effect"])
        assert own["used"] and own["effect"] > 0.1, own
        assert not any(r["used"] for r in rows
                       if r["subroutine"] == sub and r["constituent"] == other)
    compression = {(r["hook"], r["constituent"]): r["compression"]
                   for r in analysis.results["probes"]["rows"]}
    assert max(compression.values()) > 1.2


def test_report_renders_in_a_real_browser(analysis):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian package 'chromium' is not installed (apt-get install chromium); "
                    "the browser rendering check needs it")
    dom = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tempfile.mkdtemp()}", "--virtual-time-budget=20000", "--dump-dom",
         (analysis.out / "report.html").as_uri()],
        capture_output=True, text=True, timeout=120).stdout
    assert dom.count('class="plot-container plotly"') == 8  # eight figures drawn by plotly.js
    assert dom.count("main-svg") >= 8


def test_cli_report_rerenders_from_results_json(analysis, capsys):
    (analysis.out / "report.html").unlink()
    assert cli.main(["report", str(analysis.out)]) == 0
    assert (analysis.out / "report.html").exists() and "report:" in capsys.readouterr().out


def test_cli_help_shows_examples():
    result = subprocess.run([sys.executable, "-m", "modprobe.cli", "--help"], capture_output=True,
                            text=True)
    assert result.returncode == 0 and "modprobe analyze --model minilm" in result.stdout


@pytest.mark.parametrize("argv, message", [
    (["analyze", "--model", "minilm", "--task", "nope", "--out", "x"], "unknown task 'nope'"),
    (["analyze", "--model", "not/a/dir", "--task", "language", "--out", "x"], "accepted model specs"),
    (["analyze", "--model-factory", "no_such_pkg:f", "--task", "vision", "--out", "x"],
     "cannot import"),
    (["analyze", "--model-factory", "nocolon", "--task", "vision", "--out", "x"], "MODULE:FUNCTION"),
    (["report", "/nonexistent-run"], "does not exist"),
])
def test_cli_bad_arguments_say_what_is_wrong(argv, message):
    with pytest.raises(SystemExit, match=re.escape(message)):
        cli.main(argv)


def test_cli_analyze_with_a_model_factory(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_models.py").write_text(
        "import modprobe as mp\n"
        "def build():\n    return mp.scratch.mlp([32, 64, 16]).module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert cli.main(["analyze", "--model-factory", "my_models:build", "--task", "hyperteacher",
                     "--out", str(out), "--quick", "--n-random", "20"]) == 0
    check_schema(json.loads((out / "results.json").read_text()))
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_quick_mask_targets_are_the_upper_blocks_and_mask_params_override_them():
    from modprobe.analysis import mask_targets

    bert = mp.scratch.transformer("bert", n_layers=4, d_model=32, n_heads=4, d_mlp=64,
                                  vocab_size=40, max_len=16, seed=0)
    quick = mp.AnalysisConfig.quick()
    found = mask_targets(bert, quick)
    names = bert.param_names(found["params"])
    assert names and all(n.startswith(("blocks.2.", "blocks.3.")) for n in names)
    assert {n.split(".")[2] for n in names} == {"attn", "mlp"}
    assert "upper 2 of 4 blocks" in found["description"]
    assert mask_targets(bert, mp.AnalysisConfig())["params"] is None
    mine = mask_targets(bert, mp.AnalysisConfig.quick(mask_params=("blocks.0.mlp.*.weight",)))
    assert mine["params"] == ["blocks.0.mlp.*.weight"] and mine["scope"] == "mask_params"
    plain = mp.wrap(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
    assert mask_targets(plain, quick)["params"] is None  # no list of blocks: everything
