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


# The documentation: the README is a front door to docs/, and every page names real files,
# real sections and real code.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
# Names in the pages that look like rechar's Python names but are not (an ONNX metadata key).
NOT_PYTHON = {"rechar.module"}


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # a '#' in a code block is no heading
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def _links(page: Path) -> list[tuple[str, str]]:
    """(target path, anchor) of every relative link on the page."""
    targets = LINK.findall(page.read_text())
    return [tuple(t.partition("#")[::2]) for t in targets if "://" not in t and not t.startswith("mailto:")]


def test_readme_maps_every_docs_page():
    linked = {(ROOT / target).resolve() for target, _ in _links(ROOT / "README.md")}
    unlinked = [p.name for p in (ROOT / "docs").glob("*.md") if p.resolve() not in linked]
    assert not unlinked, f"docs pages missing from the README's documentation map: {unlinked}"


def test_every_link_resolves_to_a_file_and_a_heading():
    broken = []
    for page in PAGES:
        for target, anchor in _links(page):
            path = (page.parent / target).resolve() if target else page
            if not path.exists():
                broken.append(f"{page.name}: {target}")
            elif anchor and path.suffix == ".md" and anchor not in _anchors(path):
                broken.append(f"{page.name}: {target}#{anchor} (no such heading)")
    assert not broken, "broken links: " + "; ".join(broken)


def test_pages_name_modules_that_exist():
    """Module paths and Python names in the pages exist, so that a moved module cannot leave the
    documentation pointing at the old place."""
    missing = []
    for page in PAGES:
        text = page.read_text()
        for path in set(re.findall(r"(?<![\w/.])(rechar/[\w/]*\w(?:\.py)?)", text)):
            if not (ROOT / path).exists():
                missing.append(f"{page.name}: {path}")
        for name in set(re.findall(r"(?<![\w/.])(rechar(?:\.[A-Za-z_]\w*)+)", text)) - NOT_PYTHON:
            if not _resolves(name):
                missing.append(f"{page.name}: {name}")
    assert not missing, "named in the docs but not in the code: " + "; ".join(sorted(missing))


def _resolves(dotted: str) -> bool:
    """Whether ``a.b.c`` is a module, or an attribute of the longest module prefix, in this
    checkout (read from the source, so that no framework is imported)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        source = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if source.exists():
            rest = parts[i:]
            if not rest:
                return True
            if len(rest) > 1:
                return False
            return re.search(rf"^\s*(?:def|class)\s+{rest[0]}\b|^\s*{rest[0]}\s*[:=]|\bimport\b[^\n]*\b{rest[0]}\b|^\s+{rest[0]},",
                             source.read_text(), flags=re.M) is not None
    return False


def test_command_lines_in_the_pages_parse():
    """Every `rechar ...` line of a shell block in the README and docs names a real command and
    real options (parsed by rechar's CLI, not run)."""
    import shlex

    import click

    from rechar.cli import cli

    wrong = []
    for page in PAGES:
        for block in re.findall(r"```sh\n(.*?)```", page.read_text(), flags=re.S):
            for line in block.splitlines():
                if not line.startswith("rechar "):
                    continue
                name, *args = shlex.split(line, comments=True)[1:]
                command = cli.get_command(None, name)
                try:
                    if command is None:
                        raise click.UsageError(f"no command {name!r}")
                    command.make_context(name, args)
                except click.ClickException as e:  # no such option, a bad value, a missing argument
                    wrong.append(f"{page.name}: {line.split('#')[0].strip()}: {e.format_message()}")
    assert not wrong, "command lines rechar does not accept: " + "; ".join(wrong)
