"""Sweeps: study expansion, content-hash cells, skip and resume, tables, report, CLI, backends.

The Ray test (marked ``ray``) starts a two-worker local Ray cluster, removes one worker node
while cells are running on it, and checks that the aggregated table equals the local backend's.
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

import pytest

import modprobe as mp
from modprobe import cli
from modprobe.sweeps import SweepError, aggregate, load_study, missing
from modprobe.sweeps.report import write_sweep_report

sys.path.insert(0, str(Path(__file__).parent))

TASK = {"name": "hyperteacher", "n_train": 256, "n_test": 128, "n_modules": 4, "max_active": 2,
        "dim": 4}
CONFIG = {"quick": True, "mask_epochs": 2, "l0_lambda": [1.0], "n_random": 20, "probe_cv": 2,
          "probe_hooks": ["act1"], "fit": {"epochs": 5, "lr": 3e-3, "backbone_lr": 3e-3}}
MODEL = {"factory": "_sweep_models:pretrained", "args": {"width": 8}}
STUDY = {"name": "tiny", "base": {"model": MODEL, "task": TASK, "config": CONFIG},
         "grid": {"model.args.width": [8, 16], "init": ["pretrained", "random_init"]}}


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """The tiny study run once in this process (the reference for the other backends)."""
    out = tmp_path_factory.mktemp("sweep") / "local"
    return mp.sweep(STUDY, out, workers=1, progress=False)


SCALING = Path(__file__).parent.parent / "examples" / "scaling.toml"


@pytest.fixture(scope="module")
def scaling_local(tmp_path_factory):
    """`modprobe sweep examples/scaling.toml --quick` on the local backend (4 cells)."""
    out = tmp_path_factory.mktemp("scaling") / "local"
    assert cli.main(["sweep", str(SCALING), "--quick", "--out", str(out), "--workers", "1"]) == 0
    return out


def frame(result_or_dir, name="table"):
    from modprobe.sweeps import read_table

    root = result_or_dir.out if hasattr(result_or_dir, "out") else result_or_dir
    return read_table(root, name).sort_values("cell").reset_index(drop=True)


# ----------------------------------------------------------------------------- the study
def test_grid_is_the_product_of_its_axes_crossed_with_the_cell_list():
    study = load_study({**STUDY, "grid": {"model.args.width": [8, 16, 32], "seed": [0, 1]},
                        "cells": [{"task.support": "random"}, {"task": {"frac_ood": 0.5}}]})
    assert len(study) == 2 * 3 * 2
    widths = sorted({c.model["args"]["width"] for c in study.cells})
    assert widths == [8, 16, 32] and {c.seed for c in study.cells} == {0, 1}
    # a cell table merges into base: the task keeps its name and options
    merged = [c for c in study.cells if c.task.get("frac_ood") == 0.5]
    assert len(merged) == 6 and all(c.task["n_modules"] == 4 for c in merged)
    assert len({c.id for c in study.cells}) == len(study)


def test_cell_id_is_a_hash_of_the_settings_only():
    a = load_study(STUDY).cells[0]
    reordered = {"grid": {"init": ["pretrained", "random_init"], "model.args.width": [8, 16]},
                 "base": {"config": dict(reversed(list(CONFIG.items()))), "task": TASK,
                          "model": {"args": {"width": 8}, "factory": MODEL["factory"]}}}
    b = load_study(reordered).cells[0]
    assert a.id == b.id and len(a.id) == 12
    changed = load_study({**STUDY, "base": {**STUDY["base"], "seed": 1}}).cells[0]
    assert changed.id != a.id


def test_toml_study_with_nested_grid_tables_and_quick_overrides(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("""
name = "t"
[base]
model = { scratch = "mlp", width = 64, depth = 2 }
task = { name = "hyperteacher", n_train = 256 }
[grid.model]
width = [32, 64]
[grid]
seed = [0, 1, 2]
[quick.base.task]
n_modules = 4
[quick.grid]
seed = [0]
""")
    full, quick = load_study(path), load_study(path, quick=True)
    assert full.name == "t" and len(full) == 6 and len(quick) == 2
    assert all(c.task["n_modules"] == 4 and c.task["n_train"] == 256 for c in quick.cells)
    with pytest.raises(ValueError, match=r"\[quick\]"):
        load_study({"base": STUDY["base"]}, quick=True)


@pytest.mark.parametrize("change, message", [
    ({"config": {**CONFIG, "mask_epoch": 3}}, "unknown config field.*mask_epoch"),
    ({"config": {**CONFIG, "fit": {"epoch": 3}}}, "unknown config.fit field.*epoch"),
    ({"task": {**TASK, "n_modulez": 4}}, "unknown option.*n_modulez"),
    ({"task": {**TASK, "name": "nope"}}, "task name must be one of"),
    ({"model": {"scratch": "mlp"}}, "width .*or sizes"),
    ({"model": {"scratch": "mlp", "width": 8}, "init": "random_init"}, "already random"),
    ({"model": {"spec": "minilm", "factory": "a:b"}}, "a model is one of"),
    ({"model": {"factory": "no_colon"}}, "module:function"),
    ({"init": "random"}, "init must be one of"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, change, message):
    study = {**STUDY, "base": {**STUDY["base"], **change}, "grid": {"seed": [0]}}
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=message):
        mp.sweep(study, out, workers=1, progress=False)
    assert not out.exists()


# ----------------------------------------------------------------------------- running
def test_every_cell_is_an_analysis_in_its_hash_directory_and_the_table_holds_its_numbers(local):
    study = load_study(STUDY)
    table = frame(local)
    assert sorted(table["cell"]) == sorted(c.id for c in study.cells)
    for cell in study.cells:
        results = json.loads((local.out / "cells" / cell.id / "results.json").read_text())
        assert results["label"] == cell.init and results["config"]["seed"] == cell.seed
        row = table[table["cell"] == cell.id].iloc[0]
        assert row["model.args.width"] == cell.model["args"]["width"] and row["init"] == cell.init
        assert row["fit.heldout"] == results["fit"]["heldout"]
        assert row["fit.test"] == results["fit"]["test"]
        assert row["decodability"] == results["scalars"]["decodability"]
        # n_params: an MLP 8 -> w -> 4 with biases
        w = cell.model["args"]["width"]
        assert row["n_params"] == 8 * w + w + w * 4 + 4
    # the random-init arm starts from other weights, so its numbers differ from the pretrained one
    pre = table[table["init"] == "pretrained"].sort_values("model.args.width")
    rnd = table[table["init"] == "random_init"].sort_values("model.args.width")
    assert (pre["fit.test"].to_numpy() != rnd["fit.test"].to_numpy()).all()
    probes = frame(local, "probes")
    assert set(probes["cell"]) == set(table["cell"])
    assert set(probes["hook"]) == {"input", "act1"}
    import pandas as pd

    csv = pd.read_csv(local.out / "table.csv").sort_values("cell").reset_index(drop=True)
    assert (csv["fit.heldout"] - table["fit.heldout"]).abs().max() < 1e-12


def test_rerun_skips_finished_cells_without_analysing(local, monkeypatch):
    import modprobe.analysis

    monkeypatch.setattr(modprobe.analysis, "analyze",
                        lambda *a, **k: pytest.fail("a finished cell was analysed again"))
    again = mp.sweep(STUDY, local.out, workers=1, progress=False)
    assert again.ran == [] and len(again.skipped) == 4
    assert again.table.equals(local.table)


def test_an_unfinished_cell_resumes_from_its_saved_stages(local, tmp_path, monkeypatch):
    import shutil

    import modprobe.analysis

    out = tmp_path / "copy"
    shutil.copytree(local.out, out)
    cell = load_study(STUDY).cells[0]
    (out / "cells" / cell.id / "results.json").unlink()  # killed after the last stage
    assert missing(out) == [cell.id]

    def fail(*args, **kwargs):
        raise AssertionError("a saved stage was recomputed")

    monkeypatch.setattr(modprobe.analysis, "fit", fail)
    monkeypatch.setattr(modprobe.analysis.pruning, "train_subnetworks", fail)
    monkeypatch.setattr(modprobe.analysis.ablation, "run", fail)
    monkeypatch.setattr(modprobe.analysis.probes, "decodability", fail)
    resumed = mp.sweep(STUDY, out, workers=1, progress=False, report=False)
    assert resumed.ran == [cell.id]
    assert frame(resumed).equals(frame(local))


def test_a_failing_cell_is_reported_and_the_others_are_saved(tmp_path):
    study = {**STUDY, "grid": {"model": [{"scratch": "mlp", "width": 8, "depth": 2},
                                         {"factory": "nonexistent_pkg_xyz:build"}]}}
    with pytest.raises(SweepError, match="cannot import model factory") as info:
        mp.sweep(study, tmp_path / "s", workers=1, progress=False)
    assert len(info.value.errors) == 1
    table, _ = aggregate(tmp_path / "s")
    assert len(table) == 1 and table["model.scratch"].iloc[0] == "mlp"
    assert frame(tmp_path / "s").equals(table)  # the finished cell's table is written anyway


def test_local_processes_give_the_same_table_and_survive_a_dying_worker(local, tmp_path):
    """Two worker processes; one cell's process dies the first time it builds its model."""
    flag = tmp_path / "died"
    study = {**STUDY, "grid": {**STUDY["grid"]}, "cells": [{}]}
    study["grid"]["model"] = [MODEL, {"factory": "_sweep_models:dies_once",
                                      "args": {"flag": str(flag)}}]
    study["grid"].pop("model.args.width")
    result = mp.sweep(study, tmp_path / "pool", workers=2, progress=False, report=False)
    assert flag.exists()  # the worker did die once
    table = frame(result)
    assert len(table) == 4 and table["fit.test"].notna().all()
    # cells the two sweeps share give identical numbers in- and out-of-process
    reference = frame(local)
    shared = sorted(set(table["cell"]) & set(reference["cell"]))
    assert len(shared) == 2
    numbers = [c for c in reference.columns if c.startswith(("fit.", "density", "isolat"))
               or c in ("task_metric", "decodability", "n_params")]
    mine = table.set_index("cell").loc[shared, numbers]
    assert mine.equals(reference.set_index("cell").loc[shared, numbers])


# ----------------------------------------------------------------------------- report, CLI
def test_report_plots_metrics_against_size_seed_and_init(local):
    text = (local.out / "report.html").read_text()
    for heading in ("Metric versus model size", "Metric versus seed",
                    "Pretrained versus random init", "Table"):
        assert f"<h2>{heading}</h2>" in text
    assert "model.args.width" in text and text.count("plotly-graph-div") >= 3
    assert "<script src=" not in text and text.count("<script type=\"text/javascript\">") == 1


def test_cli_runs_a_toml_study_and_rerenders_its_report(local, tmp_path, capsys):
    import tomllib  # noqa: F401 - Python >= 3.11

    path = tmp_path / "study.toml"
    path.write_text(_toml(STUDY))
    out = tmp_path / "cli"
    assert cli.main(["sweep", str(path), "--out", str(out), "--workers", "1"]) == 0
    assert "4 cells (4 run" in capsys.readouterr().out
    assert frame(out).equals(frame(local))  # same settings, same cell ids, same numbers
    (out / "report.html").unlink()
    assert cli.main(["sweep", "report", str(out)]) == 0
    assert (out / "report.html").exists()
    with pytest.raises(SystemExit, match="not a sweep directory"):
        cli.main(["sweep", "report", str(tmp_path)])


def _toml(study):
    def value(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {value(x)}" for k, x in v.items()) + " }"
        return json.dumps(v)

    lines = [f'name = "{study["name"]}"', "[base]"]
    lines += [f"{k} = {value(v)}" for k, v in study["base"].items()]
    lines += ["[grid]"] + [f'"{k}" = {value(v)}' for k, v in study["grid"].items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- Ray
@pytest.mark.ray
def test_ray_cluster_losing_a_worker_mid_sweep_gives_the_local_table(scaling_local, tmp_path):
    """`modprobe sweep examples/scaling.toml --quick --backend ray` on two one-CPU worker
    nodes; once cells are running, one node is removed (its worker processes die with it). Ray
    retries the lost cell elsewhere, where it resumes from its saved stages; no cell is lost and
    the aggregated tables equal the local backend's."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    out = tmp_path / "ray"
    result, error, in_flight = {}, [], []

    def run():
        try:
            result["sweep"] = mp.sweep(SCALING, out, quick=True, backend="ray",
                                       progress=False, max_retries=3)
        except BaseException as err:  # noqa: BLE001 - re-raised in the test thread
            error.append(err)

    try:
        ray.init(address=cluster.address)  # the driver log shows the lost task's retry
        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.time() + 120  # wait until both nodes are inside a cell
        while time.time() < deadline and len(in_flight) < 2 and thread.is_alive():
            started = [p.parent.name for p in (out / "cells").glob("*/cell.json")]
            in_flight = [c for c in started if not (out / "cells" / c / "results.json").exists()]
            time.sleep(0.02)
        assert in_flight, "no cell was ever running: nothing to kill"
        cluster.remove_node(workers[0], allow_graceful=False)
        thread.join(timeout=300)
        assert not thread.is_alive() and not error, error
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert missing(out) == []
    assert frame(result["sweep"]).equals(frame(scaling_local))
    assert frame(result["sweep"], "probes").equals(frame(scaling_local, "probes"))


# ----------------------------------------------------------------------------- the reproduction
def test_scaling_reproduction_quick_tables_follow_from_the_sweep(scaling_local, tmp_path):
    """examples/reproduce_scaling_compositionality.py --quick: its summary is computed from the
    sweep's own tables (OOD R² of trained students, deep-layer strength-probe R², the median over
    modules, trained minus untrained, paired by seed)."""
    import shutil
    import subprocess

    import pandas as pd

    script = SCALING.with_name("reproduce_scaling_compositionality.py")
    out = tmp_path / "scaling"
    shutil.copytree(scaling_local, out)  # the same cells: the script finds them finished
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, str(script), "--quick", "--out", str(out),
                          "--workers", "1"], capture_output=True, text=True, env=env,
                         timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "OOD R²" in run.stdout and (out / "reproduction.html").exists()
    assert "4 cells (0 run, 4 already finished)" in run.stdout
    summary = pd.read_csv(out / "reproduction.csv")
    table, probes = pd.read_parquet(out / "table.parquet"), pd.read_parquet(out / "probes.parquet")
    assert sorted(summary["model.width"]) == [8, 16]
    deep = probes[probes["constituent"].str.startswith("strength_") & (probes["hook"] == "act2")]
    deep = deep.groupby("cell")["score"].median()
    for _, row in summary.iterrows():
        cells = table[table["model.width"] == row["model.width"]]
        trained = cells[cells["config.fit.finetune"]]
        untrained = cells[~cells["config.fit.finetune"]]
        assert row["ood_r2"] == pytest.approx(trained["fit.heldout"].mean())
        gain = deep[trained["cell"]].mean() - deep[untrained["cell"]].mean()
        assert row["deep_gain"] == pytest.approx(gain)


def test_a_cell_locked_by_another_process_is_waited_for_and_not_analysed_twice(local, tmp_path,
                                                                              monkeypatch):
    """While another process holds a cell's lock, run_cell waits; when that process has
    published results.json, run_cell returns them without analysing."""
    import fcntl
    import shutil

    import modprobe.analysis
    from modprobe.sweeps.cell import run_cell

    monkeypatch.setattr(modprobe.analysis, "analyze",
                        lambda *a, **k: pytest.fail("the cell was analysed twice"))
    cell = load_study(STUDY).cells[0]
    directory = tmp_path / "cells" / cell.id
    directory.mkdir(parents=True)
    returned = []
    with open(directory / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # "another process" is working on the cell
        thread = threading.Thread(target=lambda: returned.append(
            run_cell(cell.to_dict(), str(tmp_path))))
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive() and not returned  # waiting for the lock
        for name in ("cell.json", "results.json"):
            shutil.copy(local.out / "cells" / cell.id / name, directory / name)
        fcntl.flock(handle, fcntl.LOCK_UN)
    thread.join(timeout=60)
    assert returned and returned[0]["results"]["fit"] == json.loads(
        (local.out / "cells" / cell.id / "results.json").read_text())["fit"]
