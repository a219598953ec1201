"""Pretrained versus random init: does pretraining make modular structure more reliable?
The bundled MiniLM (fine-tuned) and its random-init twins (trained from scratch), analysed the
same way per seed; a twin that does not learn the task is reported and left out. --quick is a
smoke run: its twin trains for 2 epochs only and does not learn the task.

    python examples/compare_pretrained_random.py --out runs/compare [--quick]
"""
import argparse
import dataclasses

import modprobe as mp
from modprobe.demo import demo_config
from modprobe.fitting import FitConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="runs/compare")
    parser.add_argument("--quick", action="store_true", help="one seed, small sizes")
    args = parser.parse_args()
    model = mp.load_model("minilm")
    if args.quick:
        task = mp.tasks.load("language", seed=0, n_train=96, n_test=64, model=model)
        config = dataclasses.replace(demo_config(seed=0), mask_params=("blocks.5.mlp.*.weight",),
                                     mask_epochs=6, probe_hooks=("blocks.5.hook_out",),
                                     probe_cv=2, fit=FitConfig(epochs=3), twin_check=False,
                                     max_rounds=2, scratch_fit=FitConfig.scratch(epochs=2))
        seeds = (0,)
    else:
        task = mp.tasks.load("language", seed=0, model=model)
        config, seeds = mp.AnalysisConfig(), (0, 1, 2)
    print(mp.compare(model, task, seeds=seeds, out=args.out, config=config).summary())


if __name__ == "__main__":
    main()
