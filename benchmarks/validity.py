"""The planted-model validity suite: do modprobe's verdicts match models whose answer is known?

Runs ``modprobe.validate.run_suite`` (pruning with the default MaskConfig, ablation against 100
size-matched random controls) on every family x width x seed and prints, per family, the expected
and found verdicts, then every cell: precision/recall of the kept weights against the planted
module, and the ablation effect with its conservative lower end.

    .venv/bin/python benchmarks/validity.py                      # 9 families x (32, 256) x 5 seeds
    .venv/bin/python benchmarks/validity.py --families branches rotated --seeds 0 1 --widths 32
    .venv/bin/python benchmarks/validity.py --jobs 2 --out runs/validity.json   # 1 thread per job
    .venv/bin/python benchmarks/validity.py --necessity none     # sufficiency only, for contrast
    .venv/bin/python benchmarks/validity.py --without-speedups   # the settings before issue 17

Target (issue 12): the right verdict in >= 90% of cells and no false "isolated" on the
bottleneck, rotated, entangled and random-init families.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from modprobe import pruning, validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(validate.FAMILIES),
                        choices=list(validate.FAMILIES))
    parser.add_argument("--widths", nargs="+", type=int, default=[32, 256])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--jobs", type=int, default=1, help="cells run in parallel processes")
    parser.add_argument("--necessity", choices=pruning.NECESSITY, default="peel",
                        help="none: ablate the sufficient subnetwork only (the method before "
                        "necessity searches), to see what peeling changes")
    parser.add_argument("--without-speedups", action="store_true",
                        help="train masks as before the speed work: each grid point in its own "
                        "pass (share_prefix=False) and the 1%%-of-kept settling rule alone "
                        "(stable_total=0), to compare the verdicts with the default's")
    parser.add_argument("--out", type=Path, default=None, help="also write every row as JSON")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    mask_config = pruning.MaskConfig(necessity=args.necessity)
    if args.without_speedups:
        mask_config = mask_config.replace(share_prefix=False, stable_total=0.0)
    report = validate.run_suite(args.families, args.widths, args.seeds, jobs=args.jobs,
                                mask_config=mask_config)
    cells = len(args.families) * len(args.widths) * len(args.seeds)
    elapsed = time.perf_counter() - start
    print(f"{cells} cells, {len(report.rows)} subnetworks, {elapsed / 60:.1f} min "
          f"({args.jobs} process{'es' if args.jobs > 1 else ''})\n")
    print(report.summary_table())
    print(f"\nright verdicts: {report.right_fraction:.1%}; false 'isolated': "
          f"{len(report.false_isolated)}\n")
    print(report.table())
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": report.rows, "summary": report.summary}, indent=1,
                                       default=str))
    return 0 if report.right_fraction >= 0.9 and not report.false_isolated else 1


if __name__ == "__main__":
    sys.exit(main())
