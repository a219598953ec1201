"""The documentation builds without a warning, and the names and flags it shows exist."""
import argparse
import dataclasses
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

import modprobe as mp
from modprobe.cli import _parser

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_COMMAND = re.compile(r"modprobe (?:demo|analyze|compare|report|sweep)\b[^`\n]*")
_FLAG = re.compile(r"(?<![\w-])--[a-z][a-z-]*")


def _cli_flags() -> set[str]:
    flags, parsers = set(), [_parser()]
    while parsers:
        parser = parsers.pop()
        for action in parser._actions:
            flags.update(s for s in action.option_strings if s.startswith("--"))
            if isinstance(action, argparse._SubParsersAction):
                parsers.extend(action.choices.values())
    return flags


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None
                    or importlib.util.find_spec("mkdocstrings_handlers") is None,
                    reason="mkdocs and mkdocstrings[python] are not installed (the 'dev' extra)")
def test_docs_build_strict_without_warnings(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q",
                             "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "WARNING" not in result.stderr
    home = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert "make demo" in home and "make test" in home          # the home page is the README
    api = (tmp_path / "site" / "api" / "pruning" / "index.html").read_text(encoding="utf-8")
    assert "train_subnetworks" in api and "MaskConfig" in api   # rendered from the docstrings


def test_readme_keeps_the_two_commands_and_stays_a_guide():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make demo" in readme and "make test" in readme
    assert len(readme.splitlines()) <= 250


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_mp_name_the_docs_show_exists(page):
    text = page.read_text(encoding="utf-8")
    missing = []
    for name in sorted(set(re.findall(r"\b(?:mp|modprobe)((?:\.[A-Za-z_]\w*)+)", text))):
        obj = mp
        for part in name.strip(".").split("."):
            if not hasattr(obj, part):
                missing.append(name)
                break
            obj = getattr(obj, part)
    assert not missing, f"{page.name} names what modprobe does not have: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_config_field_the_docs_show_exists(page):
    configs = {"AnalysisConfig": mp.AnalysisConfig, "MaskConfig": mp.pruning.MaskConfig,
               "FitConfig": mp.fitting.FitConfig, "ProbeConfig": mp.probes.ProbeConfig,
               "AblationConfig": mp.ablation.AblationConfig, "VerdictRules": mp.ablation.VerdictRules}
    text = page.read_text(encoding="utf-8")
    missing = []
    for cls, args, attr in re.findall(r"\b(\w+Config|VerdictRules)(?:\(([^()]*)\)|\.(\w+))", text):
        if cls not in configs:
            continue
        fields = {f.name for f in dataclasses.fields(configs[cls])}
        if cls == "AnalysisConfig":  # flat keywords that set one nested stage field
            fields |= set(mp.analysis.SHORTHANDS)
        names = re.findall(r"\b(\w+)=", args) + ([attr] if attr else [])
        missing += [f"{cls}.{n}" for n in names if n not in fields and not hasattr(configs[cls], n)]
    assert not missing, f"{page.name} shows settings that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_line_flag_the_docs_show_exists(page):
    text = page.read_text(encoding="utf-8")
    shown = _COMMAND.findall(text) + re.findall(r"^Options:.*?$(?:\n.+$)*", text, re.M)
    flags = {f for line in shown for f in _FLAG.findall(line)}
    assert flags <= _cli_flags(), f"{page.name}: unknown flags {sorted(flags - _cli_flags())}"
