"""Every example script runs end to end in its --quick mode and prints its result."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"


@pytest.mark.parametrize("script, expect", [
    ("analyze_own_module.py", "report:"),
    ("custom_task.py", "report:"),
    ("analyze_hf_directory.py", "report:"),
    ("compare_pretrained_random.py", "random-init"),
    ("probes_only.py", "decodability (mean best-layer selectivity)"),
])
def test_example_runs_quick(script, expect, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    args = [sys.executable, str(EXAMPLES / script), "--quick"]
    if script != "probes_only.py":
        args += ["--out", str(tmp_path / "run")]
    result = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert expect in result.stdout
    if script != "probes_only.py":
        assert (tmp_path / "run" / "results.json").exists()
        assert (tmp_path / "run" / "report.html").exists()
