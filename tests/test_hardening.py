"""Bad inputs and faults: one clear error before any work, nothing written outside out/, checked
results files. Each case of the hardening issue is one row of a table below."""
import dataclasses
import errno
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from safetensors.torch import save_file
from torch import nn

import modprobe as mp
from modprobe import _validate, cli
from modprobe.fitting import FitConfig
from modprobe.probes import ProbeConfig
from modprobe.pruning import MaskConfig, Subnetwork

sys.path.insert(0, str(Path(__file__).parent))
from _planted import Dense, planted_task  # noqa: E402

CONFIG = mp.AnalysisConfig(fit=FitConfig(finetune=False, epochs=1), mask_epochs=2,
                           l0_lambda=1.0, n_random=3, complement=False, probe_cv=2,
                           progress=False)


class WorkStarted(AssertionError):
    """A stage began although the input was invalid."""


@pytest.fixture
def no_work(monkeypatch):
    """Any stage that starts fails the test: the error must come before the first stage."""
    def started(*args, **kwargs):
        raise WorkStarted("a stage ran before the bad input was reported")

    monkeypatch.setattr(mp.analysis, "fit", started)
    monkeypatch.setattr(mp.pruning, "train_subnetworks", started)
    monkeypatch.setattr(mp.ablation, "run", started)
    monkeypatch.setattr(mp.probes, "decodability", started)


def tiny_model(seed: int = 0) -> Dense:
    torch.manual_seed(seed)
    return Dense(16).eval()


def tiny_task(**renamed):
    task = planted_task(n_train=96, n_test=48)
    if renamed:
        task.subroutines = {renamed.get(k, k): v for k, v in task.subroutines.items()}
    return task


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One complete (tiny) run directory, copied per test that edits it."""
    out = tmp_path_factory.mktemp("finished") / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.analyze(tiny_model(), tiny_task(), out=out, config=CONFIG)
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ----------------------------------------------------------------------------- configs
NAN = float("nan")


@pytest.mark.parametrize("make, match", [
    (lambda: mp.AnalysisConfig(strategy="banana"), r"unknown strategy 'banana'.*'zero'"),
    (lambda: mp.AnalysisConfig(n_random=0), r"n_random must be an integer >= 1, got 0"),
    (lambda: mp.AnalysisConfig(validation_fraction=1.5), r"validation_fraction .*\[0, 1\), got 1.5"),
    (lambda: mp.AnalysisConfig(probe_cv=1), r"probe_cv must be an integer >= 2, got 1"),
    (lambda: mp.AnalysisConfig(seed=-1), r"seed must be an integer >= 0, got -1"),
    (lambda: mp.AnalysisConfig(l0_lambda=(1.0, NAN)), r"l0_lambda must be a finite number"),
    (lambda: mp.AnalysisConfig(mask_epochs=2.5), r"mask_epochs must be an integer"),
    (lambda: MaskConfig(l0_lambda=NAN), r"l0_lambda must be a finite number >= 0.*got nan"),
    (lambda: MaskConfig(epochs=2.5), r"epochs must be an integer >= 1, got 2.5"),
    (lambda: MaskConfig(density=math.inf, method="magnitude"), r"density must be a finite number"),
    (lambda: MaskConfig(device="banana"), r"device .*'banana' \(not a torch device name\)"),
    (lambda: FitConfig(lr=NAN), r"FitConfig.lr must be a finite number > 0"),
    (lambda: FitConfig(epochs=0), r"FitConfig.epochs must be an integer >= 1"),
    (lambda: ProbeConfig(cv=2.5), r"ProbeConfig.cv must be an integer >= 2"),
    (lambda: ProbeConfig(c_grid=(1.0, math.inf)), r"c_grid must be a finite number > 0"),
    (lambda: mp.ablation.AblationConfig(seed=-3), r"AblationConfig.seed must be an integer >= 0"),
])
def test_a_bad_config_value_is_refused_on_creation_naming_field_value_and_range(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# ----------------------------------------------------------------------------- analyze
@pytest.mark.parametrize("case, error, match", [
    ("probe hook the model lacks", ValueError, r"unknown hook point 'nope'"),
    ("mask pattern the model lacks", ValueError, r"parameter pattern 'nope\.\*' matches no"),
    ("name climbing out of out/", ValueError, r"'\.\./\.\./outside_A' cannot name a directory"),
    ("name with a separator", ValueError, r"'a/b' cannot name a directory"),
    ("empty name", ValueError, r"must be a non-empty string"),
    ("too little data to hold out", ValueError, r"cannot hold out"),
    ("float targets against 2 classes", ValueError, r"subroutine 'A'.*float targets"),
])
def test_analyze_reports_a_bad_input_before_the_first_stage(case, error, match, tmp_path, no_work):
    config, task = CONFIG, tiny_task()
    if case == "probe hook the model lacks":
        config = mp.AnalysisConfig(probe_hooks=("nope",), progress=False)
    elif case == "mask pattern the model lacks":
        config = mp.AnalysisConfig(mask_params=("nope.*",), progress=False)
    elif case == "name climbing out of out/":
        task = tiny_task(A="../../outside_A")
    elif case == "name with a separator":
        task = tiny_task(A="a/b")
    elif case == "empty name":
        task = tiny_task(A="")
    elif case == "too little data to hold out":
        sub = task.subroutines["A"].train
        x, y = sub.data
        task.subroutines["A"].train = mp.Subroutine((x[:2], y[:2]), readout=sub.readout)
    elif case == "float targets against 2 classes":
        sub = task.subroutines["A"].test
        x, y = sub.data
        task.subroutines["A"].test = mp.Subroutine((x, y.float()), readout=sub.readout)
    out = tmp_path / "deep" / "out"
    with pytest.raises(error, match=match):
        mp.analyze(tiny_model(), task, out=out, config=config)
    written = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert all(p == "deep" or p.startswith("deep/out") for p in written), written


@pytest.mark.parametrize("make, match", [
    (lambda x, y: mp.Subroutine((x[:256], y[:200])), r"\(256, 16\).*\(200,\).*256 vs 200"),
    (lambda x, y: mp.Subroutine((x[:200], y[:256])), r"\(200, 16\).*\(256,\).*200 vs 256"),
    (lambda x, y: mp.Subroutine(({"a": x, "b": x[:10]}, y)), r"\(10, 16\).*10 vs 300"),
    (lambda x, y: mp.Subroutine((x, torch.full((300,), NAN))), r"NaN or infinite"),
])
def test_subroutine_data_whose_parts_disagree_is_refused(make, match):
    x, y = torch.randn(300, 16), torch.randint(0, 2, (300,))
    with pytest.raises(ValueError, match=match):
        make(x, y)


def test_float_targets_against_a_two_class_output_name_the_mismatch():
    x = torch.randn(64, 16)
    data = (x, (x[:, 0] > 0).float())  # float 0/1 labels for a model with 4 outputs
    with pytest.raises(ValueError, match=r"\(64, 4\) predictions for float targets of shape "
                                         r"\(64,\).*integer \(long\) targets"):
        mp.pruning.train_subnetworks(tiny_model(), {"A": data}, MaskConfig(epochs=1, l0_lambda=1.0),
                                     progress=False)


@pytest.mark.parametrize("entry", ["train_subnetworks", "ablation.run", "decodability"])
def test_inputs_the_model_cannot_take_are_named_not_a_raw_torch_error(entry):
    model = tiny_model()  # 16 inputs
    x, y = torch.randn(40, 15), torch.randint(0, 2, (40,))
    call = {
        "train_subnetworks": lambda: mp.pruning.train_subnetworks(
            model, {"A": (x, y)}, MaskConfig(method="magnitude"), progress=False),
        "ablation.run": lambda: mp.ablation.run(
            model, {"A": {"fc1.weight": torch.ones(16, 16, dtype=torch.bool)}}, {"A": (x, y)},
            n_random=2, progress=False),
        "decodability": lambda: mp.probes.decodability(model, x, {"c": y}, cv=2, progress=False),
    }[entry]
    with pytest.raises(ValueError, match=r"cannot run on its inputs \(a batch of shape \(\d+, 15\)\)"
                                         r".*mat1 and mat2"):
        call()


# ----------------------------------------------------------------------------- resume
def test_resume_with_permuted_weights_of_the_same_sum_is_refused(tmp_path, monkeypatch):
    """The fingerprint hashes the weights' bytes, so a permutation (same sum, same repr) is
    another model."""
    model = tiny_model()

    def interrupted(*args, **kwargs):
        raise WorkStarted("stopped after run.json was written")

    monkeypatch.setattr(mp.analysis, "fit", interrupted)
    with pytest.raises(WorkStarted):
        mp.analyze(model, tiny_task(), out=tmp_path, config=CONFIG)
    permuted = tiny_model()
    with torch.no_grad():
        permuted.fc2.weight.copy_(permuted.fc2.weight.flip(0))
    assert permuted.fc2.weight.sum() == model.fc2.weight.sum()
    with pytest.raises(ValueError, match="holds a run of another model or task"):
        mp.analyze(permuted, tiny_task(), out=tmp_path, config=CONFIG)


def test_resume_refuses_when_a_recorded_subnetwork_is_missing(run_copy, no_work):
    shutil.rmtree(run_copy / "masks" / "B")
    with pytest.raises(FileNotFoundError, match=r"masks/B holds no saved Subnetwork"):
        mp.analyze(tiny_model(), tiny_task(), out=run_copy, config=CONFIG)


def test_resume_refuses_when_a_directory_holds_another_subnetwork(run_copy, no_work):
    (run_copy / "masks" / "A").rename(run_copy / "masks" / "tmp")
    (run_copy / "masks" / "B").rename(run_copy / "masks" / "A")
    (run_copy / "masks" / "tmp").rename(run_copy / "masks" / "B")
    with pytest.raises(ValueError, match=r"masks/A holds subnetwork 'B', not 'A'"):
        mp.analyze(tiny_model(), tiny_task(), out=run_copy, config=CONFIG)


@pytest.mark.parametrize("stage, edit, match", [
    ("stages/ablation.json", lambda d: "", r"ablation.json is empty"),
    ("stages/probes.json", lambda d: json.dumps(d)[:50], r"probes.json is not valid JSON"),
    ("stages/ablation.json", lambda d: json.dumps({**d, "schema_version": 7}),
     r"schema_version 7.*newer modprobe"),
    ("stages/fit.json", lambda d: json.dumps({**d, "kind": "probes"}), r"kind 'probes'"),
    ("stages/fit.json", lambda d: json.dumps({**d, "result": {"metric": "accuracy"}}),
     r"fit.json does not hold a complete fit stage"),
    ("stages/masks.done", lambda d: json.dumps({**d, "names": ["A"]}),
     r"records subnetworks \['A'\], but the task's subroutines are \['A', 'B'\]"),
    ("run.json", lambda d: "{", r"run.json is not valid JSON"),
])
def test_a_damaged_stage_file_is_refused_with_its_path(run_copy, no_work, stage, edit, match):
    path = run_copy / stage
    path.write_text(edit(json.loads(path.read_text())))
    with pytest.raises(ValueError, match=match) as err:
        mp.analyze(tiny_model(), tiny_task(), out=run_copy, config=CONFIG)
    assert str(run_copy) in str(err.value)


def test_a_failed_mask_save_leaves_no_temporary_directory(tmp_path, monkeypatch):
    def disk_full(self, directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Subnetwork, "save", disk_full)
    with warnings.catch_warnings(), pytest.raises(OSError, match="No space left"):
        warnings.simplefilter("ignore")
        mp.analyze(tiny_model(), tiny_task(), out=tmp_path, config=CONFIG)
    assert not (tmp_path / ".masks.tmp").exists() and not (tmp_path / "masks").exists()


# ----------------------------------------------------------------------------- saved masks
def _saved_subnetwork(tmp_path):
    net = Subnetwork("A", {"fc1.weight": torch.rand(4, 3) > 0.5}, MaskConfig(), {"accuracy": 1.0},
                     [])
    return net.save(tmp_path / "A")


@pytest.mark.parametrize("damage, match", [
    (lambda d: (d / "masks.safetensors").write_bytes((d / "masks.safetensors").read_bytes()[:40]),
     r"masks.safetensors is not a readable safetensors file"),
    (lambda d: (d / "subnetwork.json").write_text(json.dumps(
        {k: v for k, v in json.loads((d / "subnetwork.json").read_text()).items() if k != "order"})),
     r"subnetwork.json lacks the key\(s\) \['order'\]"),
    (lambda d: save_file(
        {"mask/fc1.weight": torch.rand(4, 3)}, str(d / "masks.safetensors")),
     r"masks.safetensors holds non-boolean masks \['mask/fc1.weight'\] \(dtype torch.float32\)"),
    (lambda d: save_file(
        {"mask/other": torch.ones(2, dtype=torch.bool)}, str(d / "masks.safetensors")),
     r"lacks the tensors \['mask/fc1.weight'\]"),
])
def test_subnetwork_load_names_the_file_that_is_damaged(tmp_path, damage, match):
    directory = _saved_subnetwork(tmp_path)
    damage(directory)
    with pytest.raises(ValueError, match=match) as err:
        Subnetwork.load(directory)
    assert str(directory) in str(err.value)


def test_a_subnetwork_trained_on_a_missing_device_still_loads(tmp_path):
    """Device checks refuse a device a new config asks for, not one a saved file records."""
    directory = _saved_subnetwork(tmp_path)
    meta = json.loads((directory / "subnetwork.json").read_text())
    meta["config"]["device"] = "cuda:7"
    (directory / "subnetwork.json").write_text(json.dumps(meta))
    loaded = Subnetwork.load(directory)
    assert loaded.config.device is None and loaded.masks.keys() == {"fc1.weight"}


def test_a_corrupt_hf_directory_names_its_problem_without_a_misleading_fallback(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert", ')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "TransformerBridge cannot boot ... AutoModel" first
        with pytest.raises(ValueError, match=r"config.json is not a readable JSON file"):
            mp.load_model(tmp_path)


# ----------------------------------------------------------------------------- results.json
def _results(tmp_path, text):
    (tmp_path / "results.json").write_text(text)
    return ["report", str(tmp_path)]


_V = _validate.SCHEMA_VERSION


@pytest.mark.parametrize("text, match", [
    (json.dumps({"schema_version": _V + 1, "kind": "analysis"}),
     rf"schema_version {_V + 1}, but this modprobe reads version (2, 3 or )?{_V}; it was written "
     "by a newer modprobe"),
    (json.dumps({"schema_version": _V, "kind": "nonsense"}),
     r"kind 'nonsense', expected 'analysis' or 'comparison'"),
    ("", r"results.json is empty"),
    ('{"schema_version": _V, "kind": "anal', r"results.json is not valid JSON"),
    (json.dumps({"schema_version": _V, "kind": "analysis", "label": "x"}),
     r"lacks the key\(s\) \['config', 'model', 'task'"),
    (json.dumps({"schema_version": _V, "kind": "comparison", "config": {}, "seeds": [0],
                 "metrics": [], "verdict": "", "pretrained": [{"kind": "analysis"}], "random": []}),
     r"pretrained\[0\] lacks the key"),
])
def test_cli_report_refuses_a_bad_results_file_in_one_line(tmp_path, text, match):
    with pytest.raises(SystemExit, match=match) as err:
        cli.main(_results(tmp_path, text))
    assert "\n" not in str(err.value.code) and str(tmp_path / "results.json") in str(err.value.code)
    assert not (tmp_path / "report.html").exists()


def test_cli_debug_shows_the_underlying_error(tmp_path):
    with pytest.raises(ValueError, match="results.json is empty"):
        cli.main(["--debug", *_results(tmp_path, "")])


# ----------------------------------------------------------------------------- CLI
@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "hardening_models.py").write_text(
        "from torch import nn\ndef build():\n    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), "
        "nn.Linear(8, 2))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return ["--model-factory", "hardening_models:build", "--task", "hyperteacher"]


@pytest.mark.parametrize("extra, match", [
    (["--seed", "-1"], r"seed must be an integer >= 0, got -1"),
    (["--device", "banana"], r"device 'banana' cannot be used: not a torch device name"),
    (["--n-random", "0"], r"n_random must be an integer >= 1"),
    (["--mask-params", "nope.*"], r"parameter pattern 'nope\.\*' matches no parameter"),
])
def test_cli_bad_options_give_one_line_before_any_work(factory, tmp_path, extra, match, no_work):
    argv = ["analyze", *factory, "--out", str(tmp_path / "out"), "--quick", *extra]
    with pytest.raises(SystemExit, match=match) as err:
        cli.main(argv)
    assert "\n" not in str(err.value.code) and str(err.value.code).startswith("modprobe: error:")


def test_cli_out_path_under_a_file_gives_one_line(factory, tmp_path, no_work):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"modprobe: error: (FileExistsError|NotADirectoryError)"):
        cli.main(["analyze", *factory, "--out", str(tmp_path / "file" / "out"), "--quick"])


def test_cli_corrupt_model_directory_gives_one_line(tmp_path, no_work):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("not json")
    with pytest.raises(SystemExit, match=r"config.json is not a readable JSON file") as err:
        cli.main(["analyze", "--model", str(model), "--task", "language", "--out",
                  str(tmp_path / "out")])
    assert "\n" not in str(err.value.code)


def test_cli_full_disk_gives_one_line(factory, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(mp.analysis, "analyze", disk_full)
    with pytest.raises(SystemExit, match=r"^modprobe: error: OSError: \[Errno 28\] No space left"):
        cli.main(["analyze", *factory, "--out", str(tmp_path / "out"), "--quick"])


# ----------------------------------------------------------------------------- properties
CLEAN_ERRORS = (ValueError, TypeError, FileNotFoundError)
ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "zero", "continuous", "neuron", "cpu", "banana", "*.weight", "fc1.*"]),
    st.lists(st.one_of(st.floats(-2, 2e3), st.just(math.nan)), max_size=3).map(tuple),
    st.lists(st.sampled_from(["", "*.weight", "fc1.*"]), max_size=2).map(tuple))
CONFIGS = [mp.AnalysisConfig, MaskConfig, FitConfig, ProbeConfig, mp.ablation.AblationConfig]


def _numbers(value):
    if isinstance(value, (tuple, list)):
        for v in value:
            yield from _numbers(v)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cls=st.sampled_from(CONFIGS), data=st.data())
def test_property_a_config_is_either_valid_or_refused_naming_a_field(cls, data):
    fields = [f.name for f in dataclasses.fields(cls) if f.name != "fit"]
    kwargs = data.draw(st.dictionaries(st.sampled_from(fields), ANY_VALUE, max_size=3))
    try:
        config = cls(**kwargs)
    except CLEAN_ERRORS as err:
        assert any(name in str(err) for name in kwargs), str(err)
        return
    values = [getattr(config, f) for f in fields]
    assert all(math.isfinite(v) for v in _numbers(values))  # no NaN or infinity is ever accepted
    seed = getattr(config, "seed")
    assert isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_in=st.integers(0, 12), n_out=st.integers(0, 12), width=st.sampled_from([4, 5]),
       kind=st.sampled_from(["classes", "too many classes", "float", "float pairs", "bool"]),
       density=st.one_of(st.floats(0, 1.5), st.just(float("nan"))),
       n_random=st.integers(-1, 3))
def test_property_entry_points_give_a_clean_result_or_a_clean_error(n_in, n_out, width, kind,
                                                                    density, n_random):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(n_in, width)
    too_many = torch.cat([torch.tensor([4]), torch.randint(0, 5, (12,))])[:n_out]  # has a 4
    y = {"classes": torch.randint(0, 2, (n_out,)), "too many classes": too_many,
         "float": torch.randn(n_out), "float pairs": torch.randn(n_out, 2),
         "bool": torch.rand(n_out) > 0.5}[kind]
    try:
        sub = mp.Subroutine((x, y))
        config = MaskConfig(method="magnitude", density=density)
        nets = mp.pruning.train_subnetworks(model, {"A": sub}, config, progress=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rep = mp.ablation.run(model, nets, {"A": sub}, n_random=n_random, n_bootstrap=0,
                                  progress=False)
    except CLEAN_ERRORS as err:
        assert str(err)
        return
    assert n_in == n_out > 0 and width == 4 and kind != "too many classes"
    assert 0 < nets["A"].density <= 1
    assert {r["condition"] for r in rep.rows} >= {"full", "ablate", "keep_only", "random_ablate"}


def test_the_package_never_unpickles():
    """SECURITY.md: modprobe's own files are JSON and safetensors; nothing calls pickle or
    torch.load."""
    import re

    sources = Path(mp.__file__).parent.rglob("*.py")
    hits = [p.name for p in sources if re.search(r"\bimport pickle\b|\bpickle\.|torch\.load\(",
                                                 p.read_text())]
    assert hits == []
