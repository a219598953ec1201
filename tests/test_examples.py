"""Every example script runs end to end in its --quick mode and prints its result."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


RUN = ("results.json", "report.html")


@pytest.mark.parametrize("script, expect, files", [
    ("analyze_own_module.py", "report:", RUN),
    ("custom_task.py", "report:", RUN),
    ("analyze_hf_directory.py", "report:", RUN),
    ("compare_pretrained_random.py", "random-init", RUN),
    ("probes_only.py", "decodability (mean best-layer selectivity)", ()),
    ("reproduce_break_it_down.py", "subnetwork_score",
     ("bid_table.csv", "language/results.json", "vision/report.html")),
])
def test_example_runs_quick(script, expect, files, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, str(EXAMPLES / script), "--quick"]
    if files:
        args += ["--out", str(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expect in result.stdout
    for name in files:
        assert (tmp_path / "run" / name).exists(), name
