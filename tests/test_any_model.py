"""Models and tasks as users bring them: a GPT-2 with its own tokenizer through the CLI, clear
errors for tokenizers that do not fit, and no verdict for a model that does not solve the task."""
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import modprobe as mp
from modprobe import cli
from modprobe.fitting import FitConfig

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import gpt2_directory  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent.parent / "examples"))
import custom_task  # noqa: E402


pytestmark = pytest.mark.filterwarnings("ignore:with n_random=20", "ignore:.*did not converge")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return gpt2_directory(tmp_path_factory.mktemp("gpt2") / "model")


def test_cli_analyzes_a_gpt2_directory_with_its_own_tokenizer(gpt2_dir, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(["analyze", "--model", str(gpt2_dir), "--task", "language", "--quick",
                     "--out", str(out), "--n-random", "20", "--mask-params",
                     "blocks.1.mlp.*.weight"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"]["options"]["tokenizer"] == str(gpt2_dir)  # the model's, not MiniLM's
    reading = results["fit"]["reading"]
    assert (reading["output"], reading["pool"]) == ("blocks.1.hook_out", "last")
    assert results["fit"]["mode"] == "finetune" and results["fit"]["chance"] == 0.25
    assert results["verdict"]["text"] in capsys.readouterr().out
    assert (out / "report.html").exists()


def test_a_model_directory_without_a_tokenizer_is_refused_before_work(gpt2_dir, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(gpt2_dir, bare)
    for f in bare.iterdir():
        if f.name.startswith(("tokenizer", "vocab", "merges", "special_tokens")):
            f.unlink()
    assert mp.load_model(bare).tokenizer is None
    with pytest.raises(SystemExit, match="has none: save it with the model"):
        cli.main(["analyze", "--model", str(bare), "--task", "language", "--quick",
                  "--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_a_task_tokenized_for_another_model_is_refused(gpt2_dir):
    gpt2 = mp.load_model(gpt2_dir)
    minilm_task = mp.tasks.load("language", n_train=16, n_test=16)  # MiniLM's word pieces
    with pytest.raises(ValueError, match="vocabulary has .* entries.*tasks.load\\('language', "
                                         "model=model\\)"):
        mp.analyze(gpt2, minilm_task, config=mp.AnalysisConfig(progress=False))
    same_vocab = mp.tasks.load("language", n_train=16, n_test=16, model=gpt2)
    mp.tasks.check_model(same_vocab, gpt2)  # the model's own tokens pass


def test_a_tokenizer_that_cannot_encode_the_task_is_named():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"[UNK]": 0, "the": 1, ".": 2}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=words, unk_token="[UNK]")
    with pytest.raises(ValueError, match="cannot encode the language task: .* become the unknown"):
        mp.tasks.load("language", tokenizer=tokenizer)


def test_a_model_that_does_not_solve_the_task_gets_no_modularity_verdict(tmp_path):
    task = custom_task.make_task(seed=0, n_train=256, n_test=128)  # balanced composite classes
    torch.manual_seed(0)
    untrained = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(),
                                    torch.nn.Linear(32, 2))
    config = mp.AnalysisConfig(fit="as_is", mask_epochs=4, l0_lambda=1.0, n_random=20,
                               complement=False, probe_cv=3, progress=False)
    analysis = mp.analyze(untrained, task, out=tmp_path, config=config)
    verdict, fit = analysis.results["verdict"], analysis.results["fit"]
    assert fit["test"] < 0.65 and fit["epochs"] == 0 and fit["chance"] == 0.5
    assert verdict["text"].startswith("cannot judge: the model does not solve the task (accuracy")
    assert not verdict["competence"]["competent"] and verdict["evidence"] == []
    assert set(verdict["isolated"].values()) == {None}
    assert not any(w in analysis.summary() for w in ("Modular", "modular:", "isolated"))
    assert "cannot judge" in (tmp_path / "report.html").read_text()


def test_the_fit_flag_sets_the_fit_mode(tmp_path):
    args = ["analyze", "--model", "minilm", "--task", "language", "--out", str(tmp_path)]
    quick = cli._config(cli._parser().parse_args(args + ["--fit", "as_is", "--quick"]))
    assert quick.fit.mode == "as_is" and quick.fit.epochs == 6  # the rest of --quick kept
    assert cli._config(cli._parser().parse_args(args + ["--fit", "head"])).fit.mode == "head"
    assert cli._config(cli._parser().parse_args(args)).fit.mode == "finetune"
    with pytest.raises(SystemExit):
        cli._parser().parse_args(args + ["--fit", "frozen"])
