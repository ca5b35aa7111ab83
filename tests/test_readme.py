"""The README's examples cannot drift: its error block is run and compared line by line, and
the quick-start progress line has the shape a real run prints."""
from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def error_block() -> list[tuple[str, list[str]]]:
    """[(command, expected output lines)] of the block after "Bad input fails before any work"."""
    block = README.split("Bad input fails before any work starts", 1)[1].split("```", 2)[1]
    examples: list[tuple[str, list[str]]] = []
    for line in block.strip().splitlines():
        if line.startswith("$ "):
            examples.append((line[2:], []))
        elif examples:
            examples[-1][1].append(line)
    return examples


def matches(expected: str, actual: str) -> bool:
    return actual.startswith(expected[:-3]) if expected.endswith("...") else actual == expected


def test_the_readme_shows_several_error_examples():
    examples = error_block()
    assert len(examples) >= 4 and all(cmd.startswith("python -m rlhf.") and out for cmd, out in examples)


@pytest.mark.parametrize("command, expected", error_block(), ids=lambda v: v if isinstance(v, str) else "")
def test_readme_error_examples_print_what_the_readme_shows(command, expected, tmp_path):
    argv = shlex.split(command)
    result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0, f"{command} succeeded"
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln and not ln.startswith("[rlhf]")]
    assert len(lines) == len(expected), f"{command} printed:\n" + "\n".join(lines)
    for want, got in zip(expected, lines):
        assert matches(want, got), f"{command}\nREADME: {want}\nprinted: {got}"
    assert not (tmp_path / "runs").exists()


def test_quick_start_progress_line_has_the_readme_shape(tmp_path, caplog):
    from rlhf.config import compose
    from rlhf.train import run
    from tests.conftest import SMALL

    shown = re.search(r"```\n(step \d+/\d+ \|.*)\n```", README).group(1)
    pattern = re.escape(shown)
    for number in sorted(set(re.findall(r"\d+(?:\.\d+)?", shown)), key=len, reverse=True):
        pattern = pattern.replace(re.escape(number), r"[-\d.e+]+")
    with caplog.at_level(logging.INFO, logger="rlhf"):
        run(compose(["algo=p3o", *SMALL, "train.steps=2", "train.log_every=1", "eval.prompts=2"]), tmp_path / "run")
    progress = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert progress and all(re.fullmatch(pattern, ln) for ln in progress), (shown, progress)
