"""Models a user might bring, built offline in the test: a tiny GPT-2 saved with its own
byte-level BPE tokenizer, and a small CNN with BatchNorm and dropout."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def gpt2_directory(path: Path, seed: int = 0) -> Path:
    """A 2-layer GPT-2 and a byte-level BPE tokenizer trained on the language task's words."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from modprobe.tasks import language

    words = ([w for pair in language.SUBJECTS for w in pair]
             + [w for pair in language.VERBS for w in pair]
             + [w for entry in language.ANTECEDENTS for w in entry]
             + list(language.PAST_VERBS) + [language.PLURAL_REFLEXIVE, "the", "that", "."])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(words)] * 4, vocab_size=600, min_frequency=1,
                            special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer,
                                        bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    end = tokenizer.eos_token_id
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4,
                                       n_inner=64, n_positions=32, bos_token_id=end,
                                       eos_token_id=end))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


class BatchNormCNN(nn.Module):
    """Two conv blocks with BatchNorm, dropout before the class logits (ResNet-style stem)."""

    def __init__(self, n_classes: int = 4, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                                  nn.Linear(width, n_classes))

    def forward(self, x):
        return self.head(self.features(x))
