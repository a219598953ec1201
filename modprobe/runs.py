"""Results back in Python: ``load_run(dir)`` reads a finished analysis or comparison directory."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from . import _validate, pruning
from .analysis import Analysis, read_results
from .comparison import Comparison, ComparisonReport

log = logging.getLogger(__name__)


def load_run(directory: str | Path) -> Analysis | Comparison:
    """The :class:`Analysis` or :class:`Comparison` that ``modprobe analyze`` / ``compare`` (or
    :func:`modprobe.analyze` / :func:`modprobe.compare` with ``out=``) wrote into ``directory``.

    Its reports come back as objects (``analysis.ablation``, ``analysis.probes``, each with
    ``to_dataframe()``) and the subnetworks from ``masks/`` as :class:`~modprobe.pruning.Subnetwork`
    objects (an empty dict when the masks were deleted). Results files of schema version 2 are
    read in the current vocabulary.
    """
    root = Path(directory)
    path = root / "results.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {root} holds no finished run (run "
                                "`modprobe analyze` or `modprobe compare` with --out there)")
    results = read_results(path)
    if results["kind"] == "analysis":
        return _analysis(results, root)
    runs = {group: [_analysis(r, root / f"{prefix}-seed{seed}")
                    for r, seed in zip(results[group], results["seeds"])]
            for group, prefix in (("pretrained", "pretrained"), ("random", "random"))}
    report = ComparisonReport(rows=results["metrics"],
                              seeds=results.get("compared_seeds", results["seeds"]),
                              verdict=results["verdict"], sentences=results.get("sentences", {}),
                              arms=results.get("arms", []),
                              each_arm=results.get("each_arm", []))
    return Comparison(report, runs["pretrained"], runs["random"], results, root)


def _analysis(results: dict[str, Any], root: Path) -> Analysis:
    """One analysis' results with the subnetworks saved beside them."""
    subnetworks = {}
    for name in results["subnetworks"]:
        folder = root / "masks" / _validate.path_name(name)
        if folder.exists():
            subnetworks[name] = pruning.Subnetwork.load(folder)
        else:
            log.info("no saved masks for subnetwork %r under %s", name, root / "masks")
    return Analysis(results, subnetworks, root)
