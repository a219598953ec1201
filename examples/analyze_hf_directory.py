"""Analyse a HuggingFace model from a local directory (booted through TransformerLens'
TransformerBridge, so hook names are TransformerLens names), tokenizing the task with the
directory's own tokenizer and reading the model where its architecture calls for (a causal LM
at its last real token, an encoder at CLS).

    python examples/analyze_hf_directory.py --model-dir path/to/hf_dir --out runs/hf
    python examples/analyze_hf_directory.py --quick   # a tiny BERT saved to a temp dir first
"""
import argparse
import tempfile

import modprobe as mp
from modprobe.fitting import FitConfig


def tiny_bert_directory() -> str:
    """A small random BERT with MiniLM's tokenizer, saved like any HF checkpoint."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    path = tempfile.mkdtemp(prefix="tiny-bert-")
    tokenizer = AutoTokenizer.from_pretrained(str(mp.models.minilm_path()))
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32,
                               num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               max_position_embeddings=32)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", default=None, help="a local HF directory (config.json, "
                        "weights, tokenizer); default: the bundled MiniLM, or a tiny BERT with --quick")
    parser.add_argument("--out", default="runs/hf_directory")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    directory = args.model_dir or (tiny_bert_directory() if args.quick else
                                   str(mp.models.minilm_path()))
    model = mp.load_model(directory)
    print(model)
    # tokenized with the model's own tokenizer (a directory without one is an error)
    task = mp.tasks.load("language", seed=0, n_train=256 if args.quick else 512,
                         n_test=96 if args.quick else 256, model=model)
    config = mp.AnalysisConfig.quick(
        fit=FitConfig(epochs=8, lr=3e-3, backbone_lr=1e-3 if args.quick else 1e-4),
        mask_params=("blocks.*.mlp.*.weight",)) if args.quick else mp.AnalysisConfig()
    print(mp.analyze(model, task, out=args.out, config=config).summary())


if __name__ == "__main__":
    main()
