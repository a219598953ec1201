"""Probes only: which layers of the pretrained MiniLM linearly encode the grammatical number of
the subject and of the antecedent, beyond a control task?

    python examples/probes_only.py [--quick]
"""
import argparse

import modprobe as mp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    model = mp.load_model("minilm")
    task = mp.tasks.load("language", seed=0, n_train=64, n_test=192 if args.quick else 1024,
                         model=model)  # tokenized with the model's own tokenizer
    labels = {k: task.constituents.labels[k] for k in ("subject_number", "antecedent_number")}
    report = mp.probes.decodability(model, task.constituents.inputs, labels,
                                    groups=task.constituents.groups, cv=3 if args.quick else 5)
    print(report.table(["hook", "constituent", "score", "control_score", "selectivity"]))
    print(f"\ndecodability (mean best-layer selectivity): {report.decodability_of('model'):.3f}")


if __name__ == "__main__":
    main()
