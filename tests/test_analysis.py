"""End to end: analyze, resume, compare, results.json schema, report, CLI."""
import dataclasses
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

import modprobe as mp
from modprobe import cli
from modprobe.fitting import FitConfig

sys.path.insert(0, str(Path(__file__).parent))
from _planted import planted_model, planted_task  # noqa: E402

CONFIG = mp.AnalysisConfig(fit=FitConfig(finetune=False, epochs=20, solved_at=0.9),
                           scratch_fit=FitConfig.scratch(lr=3e-3, backbone_lr=3e-3),
                           mask_epochs=20, n_random=80, complement=False, probe_cv=3,
                           erasure=True, erasure_random=40, progress=False)


@pytest.fixture(scope="module")
def planted():
    return planted_model(), planted_task()


@pytest.fixture(scope="module")
def analysis(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("analysis")
    return mp.analyze(planted[0], planted[1], out=out, config=CONFIG)


def check_schema(results):
    """The documented results.json schema, version 4 (docs/output.md)."""
    assert results["schema_version"] == 4 and results["kind"] == "analysis"
    for key, kind in {"label": str, "created": str, "versions": dict, "config": dict, "model": dict,
                      "task": dict, "fit": dict, "subnetworks": dict, "ablation": dict,
                      "probes": dict, "scalars": dict, "verdict": dict}.items():
        assert isinstance(results[key], kind), key
    assert set(results["scalars"]) == {"task_metric", "density", "isolation", "decodability",
                                       "subnetwork_score", "ablation_score"}
    assert {"model", "subnetwork", "subnetwork_score", "ablation_score"} <= set(
        results["break_it_down"][0])
    assert {"text", "headline", "isolated", "verdicts", "evidence"} <= set(results["verdict"])
    assert results["verdict"]["text"].startswith(results["verdict"]["headline"])
    stages = {"fit", "masks", "twin", "ablation", "probes"}
    assert set(results["timings"]) == stages | ({"erasure"} if results["config"]["erasure"] else set())
    for sub in results["subnetworks"].values():
        assert 0 <= sub["density"] <= 1 and all(0 <= d <= 1 for d in sub["densities"].values())
    for row in results["ablation"]["rows"]:
        assert {"model", "subnetwork", "eval_task", "condition", "metric", "value", "ci_low",
                "ci_high", "p_value", "p_adjusted"} <= set(row)
    for row in results["probes"]["rows"]:
        assert {"model", "hook", "constituent", "metric", "score", "ci_low", "ci_high",
                "control_score", "selectivity", "baseline"} <= set(row)
    json.dumps(results)  # plain JSON all the way down


def test_planted_modular_model_is_judged_isolated_and_results_follow_the_schema(analysis):
    results = json.loads((analysis.out / "results.json").read_text())
    check_schema(results)
    assert results["verdict"]["isolated"] == {"A": True, "B": True}


def test_sub_steps_are_timed_in_results_summary_and_report(analysis):
    results = json.loads((analysis.out / "results.json").read_text())
    masks = results["timings"]["masks"]["steps"]
    lambdas = len(CONFIG.l0_lambda)
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
    with pytest.raises(ValueError, match=r"other settings \(.*config.ablation.seed: 0 there, "
                                         r"1 now; .*; and \d+ more\)"):
        mp.analyze(planted[0], planted[1], out=analysis.out, config=other)


def test_a_run_resumes_across_a_setting_added_at_its_default_and_a_progress_change(
        planted, analysis, monkeypatch):
    """run.json written before a setting existed (here: without ``fit.max_grad_norm``) still
    resumes when the setting is at its default, and showing progress or not changes no number;
    the same setting away from its default is refused, named."""
    run = analysis.out / "run.json"
    saved = json.loads(run.read_text())
    del saved["settings"]["config.fit.max_grad_norm"]
    run.write_text(json.dumps(saved))
    monkeypatch.setattr(mp.pruning, "train_subnetworks",
                        lambda *a, **k: pytest.fail("masks were already trained"))
    again = mp.analyze(planted[0], planted[1], out=analysis.out,
                       config=dataclasses.replace(CONFIG, progress=True))
    assert again.scalars == analysis.scalars
    clipped = dataclasses.replace(CONFIG, fit=dataclasses.replace(CONFIG.fit, max_grad_norm=1.0))
    with pytest.raises(ValueError, match=r"config.fit.max_grad_norm: None there, 1.0 now"):
        mp.analyze(planted[0], planted[1], out=analysis.out, config=clipped)


def _version_3(current):
    """``current`` results as version 3 wrote them: the probes' accuracy columns and measure."""
    old = json.loads(json.dumps(current).replace('"control_score"', '"control_accuracy"')
                     .replace('"heldout_score"', '"heldout_accuracy"'))
    old["schema_version"] = 3
    for row in old["probes"]["rows"]:
        row["accuracy"] = row.pop("score")
    for config in [*old["probes"]["configs"].values(), old["config"]["probe"]]:
        config["measure"] = ["accuracy" if m == "score" else m for m in config["measure"]]
    return old


def test_a_version_3_results_file_reads_in_the_current_vocabulary(analysis, tmp_path):
    current = json.loads((analysis.out / "results.json").read_text())
    old = _version_3(current)
    assert "accuracy" in old["probes"]["rows"][0] and "score" not in old["probes"]["rows"][0]
    (tmp_path / "results.json").write_text(json.dumps(old))
    assert mp.analysis.read_results(tmp_path / "results.json") == current
    old["config"]["probe"]["pooling"] = "none"  # version 3's name of "tokens"
    assert mp.analysis.upgrade_results(old)["config"]["probe"]["pooling"] == "tokens"
    run = mp.load_run(tmp_path)
    assert run.probes.rows == current["probes"]["rows"]
    assert "score" in run.probes.to_dataframe().columns
    from modprobe.report import write_report

    write_report(run.results, tmp_path / "report.html")  # the heatmaps read "score"
    assert "Probe selectivity" in (tmp_path / "report.html").read_text()


def test_a_version_2_results_file_reads_in_the_current_vocabulary(analysis, tmp_path):
    current = json.loads((analysis.out / "results.json").read_text())
    old = dict(_version_3(current), schema_version=2)
    for part in ("ablation", "verdict", "erasure"):  # probe rows said p_adjusted already
        old[part] = json.loads(json.dumps(current[part]).replace('"p_adjusted"', '"p_holm"')
                               .replace('"p_target_adjusted"', '"p_target_holm"')
                               .replace('"n_bootstrap"', '"n_boot"'))
    for row in old["probes"]["rows"]:
        row["condition"] = row.pop("model")
    assert old["ablation"]["rows"][0]["p_holm"] is None  # the file really uses the old names
    (tmp_path / "results.json").write_text(json.dumps(old))
    upgraded = mp.analysis.read_results(tmp_path / "results.json")
    assert upgraded["ablation"] == current["ablation"]
    assert upgraded["verdict"] == current["verdict"] and upgraded["erasure"] == current["erasure"]
    assert upgraded["probes"]["rows"] == [dict(r) for r in current["probes"]["rows"]]
    old["schema_version"] = 1
    (tmp_path / "results.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match="schema_version 1, but this modprobe reads version "
                                         "2, 3 or 4;"):
        mp.analysis.read_results(tmp_path / "results.json")


def test_a_run_json_from_before_settings_were_recorded_resumes_and_is_rewritten(
        planted, analysis, tmp_path, monkeypatch):
    """A run.json that holds only the one-hash fingerprint (model, task and every setting)
    resumes when that hash matches and is rewritten with its settings; another setting is
    refused."""
    out = tmp_path / "run"
    shutil.copytree(analysis.out, out)
    hm = mp.load_model(planted[0])
    mask_config = CONFIG.mask.replace(params=mp.analysis.mask_targets(hm, CONFIG)["params"],
                                      share_prefix=CONFIG.reuse_activations)
    old = {"schema_version": 4, "kind": "run", "fingerprint":
           mp.analysis.unrecorded_fingerprint(hm, planted[1], CONFIG, mask_config, "model")}
    (out / "run.json").write_text(json.dumps(old))
    other = dataclasses.replace(CONFIG, mask=CONFIG.mask.replace(margin=0.1))
    with pytest.raises(ValueError, match="another model, task or settings .made before run.json"):
        mp.analyze(planted[0], planted[1], out=out, config=other)
    monkeypatch.setattr(mp.pruning, "train_subnetworks",
                        lambda *a, **k: pytest.fail("masks were already trained"))
    again = mp.analyze(planted[0], planted[1], out=out, config=CONFIG)
    assert again.scalars == analysis.scalars
    assert json.loads((out / "run.json").read_text())["settings"]["config.mask.margin"] == 0.05


def test_resuming_with_any_nested_setting_changed_is_refused(planted, analysis):
    """The fingerprint covers every field of the nested stage configs, including those no
    shorthand names, so masks trained under other settings are never silently reused."""
    other = dataclasses.replace(CONFIG, mask=CONFIG.mask.replace(margin=0.1))
    with pytest.raises(ValueError, match=r"other settings \(config.mask.margin: .* mask.margin"):
        mp.analyze(planted[0], planted[1], out=analysis.out, config=other)


def test_compare_sets_arms_that_both_learned_the_task_side_by_side(planted, tmp_path):
    """The twins are trained from scratch on the composite task (FitConfig.scratch), so both arms
    solve it and every seed is compared: each arm's mean with its t-interval, both arms' task
    metric beside every modularity metric, and Break It Down's scores beside the paper's range.
    (This task's subroutines read disjoint inputs and write disjoint outputs, so twins trained on
    it come out modular as well: the direction of the difference is not the point here.)"""
    cmp = mp.compare(planted[0], planted[1], seeds=(0, 1), out=tmp_path, config=CONFIG)
    assert cmp.report.seeds == [0, 1] and all(arm["learned"] for arm in cmp.report.arms)
    rows = {r["metric"]: r for r in cmp.report.rows}
    iso = rows["isolation"]
    assert iso["random_task_metric"] > 0.8 and iso["pretrained_task_metric"] > 0.9
    for arm in ("pretrained", "random"):
        assert iso[f"{arm}_ci_low"] <= iso[f"{arm}_mean"] <= iso[f"{arm}_ci_high"]
    word = ("more isolated" if iso["ci_low"] > 0 else "less isolated" if iso["ci_high"] < 0
            else "not distinguishably different")
    assert word in cmp.verdict and "Compared: seeds [0, 1]" in cmp.verdict
    assert rows["subnetwork_score"]["published"] == "+0.35 to +0.74"
    assert rows["ablation_score"]["published"] == "-0.58 to +0.02"
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["kind"] == "comparison" and len(results["random"]) == 2
    assert results["compared_seeds"] == [0, 1] and len(results["arms"]) == 4
    assert results["random"][0]["fit"]["finetuned"] and not results["pretrained"][0]["fit"]["head"]
    for run in results["pretrained"] + results["random"]:
        check_schema(run)
    assert (tmp_path / "random-seed1" / "results.json").exists()


def test_compare_leaves_out_an_arm_that_did_not_learn_the_task(planted, tmp_path):
    """Twins given a training budget far too small stay near chance: they are reported as not
    having learned the task and nothing is compared with them."""
    starved = mp.AnalysisConfig(**{**CONFIG.__dict__, "scratch_fit": FitConfig.scratch(
        epochs=1, lr=1e-6, backbone_lr=1e-6, stop_at=None, validation_fraction=0.0)})
    cmp = mp.compare(planted[0], planted[1], seeds=(0, 1), out=tmp_path, config=starved)
    random_arms = [a for a in cmp.report.arms if a["arm"] == "random"]
    assert [a["learned"] for a in random_arms] == [False, False]
    assert all(a["task_metric"] < 0.75 for a in random_arms)
    assert cmp.report.seeds == [] and cmp.report.rows == []
    assert cmp.verdict.startswith("Nothing to compare")
    assert "random-init learned it in 0 of 2 seeds" in cmp.verdict
    lines = cmp.summary().splitlines()
    assert sum(line.startswith("random") and line.endswith("did not learn the task")
               for line in (line.rstrip() for line in lines)) == 2
    assert all(r.results["verdict"]["text"].startswith("cannot judge") for r in cmp.random)
    for twin in cmp.random:  # an arm that did not learn stops after its fit
        assert "stopped" in twin.results and twin.results["subnetworks"] == {}
        assert twin.results["ablation"]["rows"] == [] and twin.results["probes"]["rows"] == []
        assert set(twin.results["timings"]) == {"fit"}
        assert "Stopped after stage 1" in twin.verdict
    assert all("stopped" not in p.results for p in cmp.pretrained)
    again = mp.load_run(tmp_path)  # the comparison comes back with its arms and compared seeds
    assert again.report.arms == cmp.report.arms and again.report.seeds == []
    assert "random seed 1: cannot judge" in again.summary()
    # each arm alone: the pretrained arm learned in both seeds, so it has an isolation interval;
    # the twins learned in none, so they have no row
    alone = {(r["arm"], r["metric"]): r for r in cmp.report.each_arm}
    iso = alone[("pretrained", "isolation")]
    assert iso["seeds"] == [0, 1] and iso["ci_low"] <= iso["mean"] <= iso["ci_high"]
    assert not any(arm == "random" for arm, _ in alone)
    assert "The pretrained arm alone (seeds [0, 1]" in cmp.verdict and "95% CI" in cmp.verdict
    assert "each arm alone" in cmp.summary()
    assert again.report.each_arm == cmp.report.each_arm
    assert "Each arm alone (not a comparison)" in (tmp_path / "report.html").read_text()


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


def _mlp_factory(tmp_path, monkeypatch) -> str:
    """A module on sys.path whose build() makes a small MLP: ``--model-factory`` for the CLI."""
    (tmp_path / "my_models.py").write_text(
        "import modprobe as mp\n"
        "def build():\n    return mp.scratch.mlp([32, 64, 16]).module\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_models:build"


def test_cli_analyze_with_a_model_factory(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert cli.main(["analyze", "--model-factory", _mlp_factory(tmp_path, monkeypatch), "--task",
                     "hyperteacher", "--out", str(out), "--quick", "--n-random", "20"]) == 0
    check_schema(json.loads((out / "results.json").read_text()))
    assert f"report: {out / 'report.html'}" in capsys.readouterr().out


def test_cli_reaches_mask_method_granularity_and_strategy(tmp_path, monkeypatch):
    factory, out = _mlp_factory(tmp_path, monkeypatch), tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli.main(["analyze", "--model-factory", factory, "--task", "hyperteacher",
                         "--out", str(out), "--quick", "--n-random", "20", "--necessity", "none",
                         "--mask-method", "hard_concrete", "--granularity", "neuron",
                         "--strategy", "mean", "--l0-lambda", "1", "--mask-epochs", "3",
                         "--probe-measure", "score"]) == 0
    results = json.loads((out / "results.json").read_text())
    check_schema(results)
    config = results["config"]
    assert (config["mask"]["method"], config["mask"]["granularity"]) == ("hard_concrete", "neuron")
    assert config["mask"]["lr"] == 0.05 and config["mask"]["init"] == 2.0  # the method's defaults
    assert config["ablation"]["strategy"] == "mean"
    assert config["probe"]["measure"] == ["score"]
    assert all(c["strategy"] == "mean" for c in results["ablation"]["config"].values())
    for name in results["subnetworks"]:
        sub = mp.pruning.Subnetwork.load(out / "masks" / name)
        assert sub.config.method == "hard_concrete" and sub.config.granularity == "neuron"
        for param, mask in sub.masks.items():  # whole output neurons: rows of nn.Linear
            assert sub.layout[param].axis == 0
            assert torch.equal(mask, sub.units[param].view(-1, *[1] * (mask.dim() - 1))
                               .expand_as(mask))
    assert results["probes"]["rows"] and not any("codelength" in r for r in results["probes"]["rows"])


def test_load_run_gives_back_the_analysis_with_its_reports_as_dataframes(analysis):
    run = mp.load_run(analysis.out)
    assert isinstance(run, mp.Analysis)
    assert run.results == json.loads((analysis.out / "results.json").read_text())
    assert run.verdict == analysis.verdict and set(run.subnetworks) == set(analysis.subnetworks)
    for name, sub in run.subnetworks.items():
        assert all(torch.equal(sub.masks[p], analysis.subnetworks[name].masks[p]) for p in sub.masks)
    rows = run.ablation.to_dataframe()
    assert len(rows) == len(analysis.results["ablation"]["rows"])
    assert {"model", "subnetwork", "eval_task", "condition", "value", "p_adjusted"} <= set(rows)
    isolation = run.ablation.to_dataframe("isolation")
    assert list(isolation["subnetwork"]) == [e["subnetwork"] for e in run.ablation.isolation]
    assert list(isolation["verdict"]) == [analysis.results["verdict"]["verdicts"][s]
                                          for s in isolation["subnetwork"]]
    probes = run.probes.to_dataframe()
    assert set(probes["model"]) == {"model"} and len(probes) == len(run.probes.rows)
    assert run.erasure is not None and len(run.erasure.to_dataframe()) == len(run.erasure.rows)
    with pytest.raises(ValueError, match="no table 'verdicts'; its tables are"):
        run.ablation.to_dataframe("verdicts")


def test_load_run_names_a_directory_without_results(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no finished run"):
        mp.load_run(tmp_path)


def test_cli_verbose_logs_each_stage_and_quiet_logs_nothing(analysis, planted, tmp_path, capsys,
                                                          monkeypatch):
    """A resumed run, so that the CLI does no work: --verbose logs every stage as resumed."""
    monkeypatch.setattr(cli, "_load", lambda args: planted[0])
    monkeypatch.setattr(cli, "load_task", lambda *args: planted[1])
    monkeypatch.setattr(cli, "_config", lambda args: CONFIG)  # the fixture's: it resumes
    argv = ["analyze", "--model", "planted", "--task", "planted", "--out", str(analysis.out)]
    assert cli.main(argv + ["--verbose"]) == 0
    err = capsys.readouterr().err
    assert all(f"stage {s}: resumed" in err for s in ("masks", "ablation", "probes"))
    assert cli.main(argv + ["--quiet"]) == 0
    captured = capsys.readouterr()
    assert "stage" not in captured.err and "Modular" in captured.out


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


def test_the_old_shorthand_mask_lambda_sets_l0_lambda_with_a_warning(cli_log):
    with pytest.warns(DeprecationWarning, match="shorthand 'mask_lambda' is deprecated; use "
                                                "'l0_lambda'"):
        config = mp.AnalysisConfig(mask_lambda=(1.0, 5.0))
    assert config.mask.l0_lambda == config.l0_lambda == (1.0, 5.0)
    with pytest.warns(DeprecationWarning):
        assert config.mask_lambda == (1.0, 5.0)
    with pytest.warns(DeprecationWarning):
        assert mp.AnalysisConfig.quick(mask_lambda=2.0).mask.l0_lambda == 2.0
    with pytest.raises(TypeError, match="both 'mask_lambda' and its new name 'l0_lambda'"):
        mp.AnalysisConfig(mask_lambda=1.0, l0_lambda=2.0)
    args = cli._parser().parse_args(["analyze", "--model", "m", "--task", "symbolic", "--out",
                                     "x", "--mask-lambda", "3"])
    assert cli._config(args).mask.l0_lambda == (3.0,)
    assert "--mask-lambda is deprecated; use --l0-lambda" in cli_log.text
