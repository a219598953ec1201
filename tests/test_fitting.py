"""Stage 1: a readout head (and optional fine-tuning) makes the model solve the composite task."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import modprobe as mp
from modprobe.fitting import FitConfig, FitResult, competence, fit

sys.path.insert(0, str(Path(__file__).parent))
from _tiny_models import BatchNormCNN, gpt2_directory  # noqa: E402


def _xor_task(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    return mp.Subroutine((x[: n // 2], y[: n // 2])), mp.Subroutine((x[n // 2:], y[n // 2:]))


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _same(before, module):
    after = module.state_dict()
    return before.keys() == after.keys() and all(torch.equal(v, after[k])
                                                 for k, v in before.items())


def test_head_on_a_frozen_backbone_fits_and_leaves_the_model_untouched():
    train, test = _xor_task()
    model = mp.scratch.mlp([2, 64, 64], seed=0)
    before = _state(model.module)
    fitted, readout, result = fit(model, train, test, n_outputs=2,
                                  config=FitConfig(epochs=60, lr=1e-2, finetune=False, batch_size=128,
                                                  progress=False))
    assert fitted is model and readout is not None and result.head and not result.finetuned
    assert result.test > 0.85, result
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
    assert not any(p.requires_grad for p in readout.parameters())


def test_finetuning_trains_a_copy():
    train, test = _xor_task()
    model = mp.scratch.mlp([2, 16, 16], seed=0)
    before = _state(model.module)
    fitted, _, result = fit(model, train, test, n_outputs=2,
                            config=FitConfig(epochs=40, lr=1e-2, backbone_lr=1e-2, progress=False))
    assert fitted.module is not model.module and result.finetuned and result.test > 0.9
    assert all(torch.equal(v, model.module.state_dict()[k]) for k, v in before.items())
    assert all(p.grad is None for p in fitted.module.parameters())


def test_a_model_that_already_solves_the_task_gets_no_head():
    train, test = _xor_task()

    class Oracle(nn.Module):
        def forward(self, x):
            return nn.functional.one_hot(((x[:, 0] > 0) ^ (x[:, 1] > 0)).long(), 2).float()

    fitted, readout, result = fit(mp.wrap(Oracle()), train, test, n_outputs=2)
    assert readout is None and not result.head and result.test == 1.0


def test_encoder_outputs_are_read_at_the_first_token():
    model = mp.scratch.transformer("bert", n_layers=1, d_model=16, n_heads=2, d_mlp=32,
                                   vocab_size=10, max_len=8)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 10, (96, 6), generator=g)
    y = (ids[:, 1] > 5).long()
    train, test = mp.Subroutine((ids[:64], y[:64])), mp.Subroutine((ids[64:], y[64:]))
    _, readout, result = fit(model, train, test, n_outputs=2,
                             config=FitConfig(epochs=25, lr=1e-2, backbone_lr=3e-3, batch_size=16,
                                               progress=False))
    assert result.reading["pool"] == "first" and result.reading["output"] == "blocks.0.hook_out"
    assert readout.pooling == "none" and result.train > 0.9


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return mp.load_model(gpt2_directory(tmp_path_factory.mktemp("gpt2")))


def _sentences(gpt2, texts):
    enc = gpt2.tokenizer(texts, padding=True, return_tensors="pt")
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def test_causal_lm_is_read_at_the_last_real_token_of_its_final_block(gpt2):
    reading = mp.models.default_reading(gpt2)
    assert (reading.output, reading.pool) == ("blocks.1.hook_out", "last")
    reader = gpt2.with_output(reading.output, reading.pool)
    short, long = "the king blamed himself .", "the pilots say that the queens blamed themselves ."
    batch = _sentences(gpt2, [short, long, short.replace("himself", "themselves")])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # padded
    pooled = reader(batch)
    _, cache = gpt2.run_with_cache(batch, names=["blocks.1.hook_out"])
    hidden = cache["blocks.1.hook_out"]
    for i in range(3):  # the last position the attention mask marks real
        last = int(batch["attention_mask"][i].nonzero().max())
        assert torch.allclose(pooled[i], hidden[i, last])
    # only the reflexive differs between sentences 0 and 2: position 0 could never tell them apart
    assert not torch.allclose(pooled[0], pooled[2])
    alone = reader(_sentences(gpt2, [short]))  # padding does not change what a sentence reads as
    assert torch.allclose(alone[0], pooled[0], atol=1e-5)


def test_fitting_a_causal_lm_learns_a_label_carried_by_the_last_word(gpt2):
    g = torch.Generator().manual_seed(0)
    plural = torch.randint(0, 2, (160,), generator=g)
    nouns = ["king", "queen", "man", "woman"]
    texts = [f"the {nouns[i % 4]}{'s' if i % 3 else ''} blamed {'themselves' if p else 'himself'} ."
             for i, p in enumerate(plural.tolist())]
    data = _sentences(gpt2, texts)
    split = lambda a, b: mp.Subroutine(({k: v[a:b] for k, v in data.items()}, plural[a:b]))  # noqa
    fitted, readout, result = fit(gpt2, split(0, 128), split(128, 160), n_outputs=2,
                                  config=FitConfig(epochs=20, lr=1e-2, backbone_lr=3e-3,
                                                   batch_size=32, progress=False))
    assert result.reading["pool"] == "last" and fitted.pool == "last"
    # the label word is second to last; read at position 0 every sentence looks the same (0.5)
    assert result.test > 0.9, result


def test_a_batchnorm_cnn_trained_from_scratch_learns_the_vision_task():
    task = mp.tasks.load("vision", seed=0, n_train=2048, n_test=256, image_size=32)
    torch.manual_seed(0)
    model = mp.wrap(BatchNormCNN())
    model.module.eval()
    before = _state(model.module)
    fitted, readout, result = fit(model, task.composite.train, task.composite.test, n_outputs=4,
                                  config=FitConfig.scratch(lr=3e-3, backbone_lr=3e-3, batch_size=64,
                                                           stop_at=0.9, progress=False))
    assert result.finetuned and readout is None  # its own logits already have the task's shape
    assert result.test > 0.8, result
    # the from-scratch recipe stopped on its held-out share, before its 40 epochs ran out
    assert result.history[-1]["validation"] >= 0.9 and result.epochs < 40
    bn = fitted.module.features[1]
    # trained in train mode: the copy's BatchNorm statistics moved
    assert not torch.equal(bn.running_mean, before["features.1.running_mean"])
    assert not any(m.training for m in fitted.module.modules())  # modes restored
    assert _same(before, model.module)  # the user's model, BatchNorm statistics included


def test_head_mode_keeps_the_users_model_and_its_batchnorm_statistics():
    task = mp.tasks.load("vision", seed=0, n_train=128, n_test=64, image_size=32)
    torch.manual_seed(0)
    module = BatchNormCNN()
    module.head[-1] = nn.Identity()  # a 16-dim feature vector: the head maps it to classes
    model = mp.wrap(module)
    before = _state(module)
    fitted, readout, result = fit(model, task.composite.train, task.composite.test, n_outputs=4,
                                  config=FitConfig(mode="head", epochs=2, progress=False))
    assert fitted is model and readout is not None and not result.finetuned
    assert _same(before, module)


def test_as_is_analyses_the_model_unchanged_and_records_its_own_score():
    train, test = _xor_task()
    model = mp.scratch.mlp([2, 32, 2], seed=0)
    fitted, readout, result = fit(model, train, test, n_outputs=2,
                                  config=FitConfig(mode="as_is", progress=False))
    assert fitted is model and readout is None and result.mode == "as_is"
    assert not result.head and not result.finetuned and result.epochs == 0
    assert result.test == result.as_is and 0.3 < result.test < 0.7  # untrained: near chance
    with pytest.raises(ValueError, match="fit='as_is'.*fit='head'"):
        fit(mp.scratch.mlp([2, 8], seed=0), train, test, n_outputs=2,
            config=FitConfig(mode="as_is"))


def test_finetuning_a_model_with_the_tasks_output_format_needs_no_new_head():
    train, test = _xor_task()
    model = mp.scratch.mlp([2, 32, 32, 2], seed=0)
    fitted, readout, result = fit(model, train, test, n_outputs=2,
                                  config=FitConfig(epochs=40, lr=1e-2, backbone_lr=1e-2,
                                                   progress=False))
    assert readout is None and result.finetuned and not result.head
    assert result.as_is < 0.7 < 0.9 < result.test
    assert fitted.module is not model.module


def test_fit_modes_and_the_older_finetune_flag():
    assert FitConfig(finetune=False).mode == "head" and FitConfig().mode == "finetune"
    assert FitConfig(mode="as_is").finetune is None
    with pytest.raises(ValueError, match="unknown mode .frozen.; choose one of"):
        FitConfig(mode="frozen")
    with pytest.raises(ValueError, match="contradicts"):
        FitConfig(mode="as_is", finetune=True)
    assert mp.AnalysisConfig(fit="head").fit.mode == "head"


def _result(test, chance):
    return FitResult("accuracy", test, test, None, True, True, 1, chance=chance)


@pytest.mark.parametrize("test, chance, competent", [
    (0.5, 0.5, False), (0.74, 0.5, False), (0.75, 0.5, True), (0.54, 0.1, False),
    (0.56, 0.1, True), (0.3, 0.0, False),
])
def test_competence_is_measured_from_chance_to_perfect(test, chance, competent):
    gate = competence(_result(test, chance))
    assert gate["competent"] is competent
    assert gate["required"] == pytest.approx(chance + 0.5 * (1 - chance))
    if not competent:
        assert gate["text"].startswith("cannot judge: the model does not solve the task (accuracy")
    lenient = competence(_result(test, chance), threshold=0.01)["competent"]
    assert lenient is (test >= chance + 0.01 * (1 - chance))


def test_gradient_clipping_bounds_each_step():
    """With the gradient clipped to a vanishing norm, Adam's steps shrink to nothing (its epsilon
    dominates), so the fine-tuned copy stays where it started; unclipped it moves. The
    from-scratch recipe clips to norm 1."""
    train, test = _xor_task()
    model = mp.scratch.mlp([2, 64, 64], seed=0)
    moved = {}
    for clip in (None, 1e-12):
        fitted, _, _ = fit(model, train, test, n_outputs=2, config=FitConfig(
            epochs=1, lr=1e-2, backbone_lr=1e-2, finetune=True, max_grad_norm=clip,
            progress=False))
        moved[clip] = max(float((a - b).abs().max()) for a, b in zip(
            fitted.module.parameters(), model.module.parameters()))
    assert moved[None] > 1e-3 and moved[1e-12] < 1e-5
    assert FitConfig.scratch().max_grad_norm == 1.0
    with pytest.raises(ValueError, match="max_grad_norm"):
        FitConfig(max_grad_norm=0)
