"""The README's promises about the repository itself."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```sh\n(.+?)\n```", readme)
    assert len(commands) >= 2, "the README starts with the main-job and the test commands"
    main_job, tests = commands[0], commands[1]
    assert "rechar run" in main_job and "--report" in main_job
    assert "pytest" in tests
    ci_lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci_lines[-1] == tests


def test_readme_install_pins_the_cpu_torch_build():
    for command in re.findall(r"```sh\n(.+?)\n```", (ROOT / "README.md").read_text())[:2]:
        assert "torch==2.13.0" in command  # an unpinned torch pulls a multi-GB CUDA build
