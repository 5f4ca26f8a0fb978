"""The README's quickstart runs exactly as written; the README stays a short entry point."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks(heading: str) -> list[str]:
    text = README.read_text()
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_quickstart_runs(tmp_path: Path) -> None:
    (block,) = python_blocks("Quickstart")
    script = tmp_path / "quickstart.py"
    script.write_text(block)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "3"
    assert "clash" in lines[2]
    assert lines[-2:] == ["2", "2 True"]


def test_framework_lines_run(tmp_path: Path) -> None:
    """The Frameworks block runs after the Quickstart's models (its Base)."""
    (quickstart,) = python_blocks("Quickstart")
    (block,) = python_blocks("Frameworks")
    script = tmp_path / "frameworks.py"
    script.write_text(quickstart + "\n" + block + "\nprint(type(session.sync_session).__name__)\n")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "ReferencesSession"


def test_readme_stays_short_and_links_out() -> None:
    # the narrative lives in docs/ (doctested there), the benchmark results in benchmarks/
    text = README.read_text()
    headings = re.findall(r"^## (.+)$", text, re.M)
    assert headings == [
        "Two commands",
        "Install",
        "Quickstart",
        "Frameworks",
        "Documentation",
        "Supported databases",
        "Tests",
    ]
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        assert (README.parent / target).exists(), target
    assert "](docs/)" in text
    assert "](benchmarks/README.md)" in text
    benchmarks = (README.parent / "benchmarks" / "README.md").read_text()
    assert "python -m benchmarks --dburi" in benchmarks
    assert "| backend | measure | result | goal |" in benchmarks


def test_two_commands() -> None:
    text = README.read_text()
    block = re.search(r"## Two commands\n\n```bash\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    demo, tests = block.splitlines()
    assert demo.startswith("pip install . && sa-references demo")
    ci = (README.parent / ".ci" / "run").read_text()
    command = tests.split("&& ", 1)[1]
    assert command.startswith("pytest --cov=sa_references --dburi ")
    for url in command.split("--dburi ")[1:]:
        assert url.strip() in ci


def test_readme_test_command_matches_ci() -> None:
    text = README.read_text()
    command = re.search(r"## Tests\n\n```bash\n(.*?)```", text, re.S).group(1)  # type: ignore[union-attr]
    ci = (README.parent / ".ci" / "run").read_text()
    pytest_line = next(line for line in command.splitlines() if line.startswith("pytest"))
    assert pytest_line.split()[:2] == ["pytest", "--cov=sa_references"]
    assert "pytest --cov=sa_references" in ci
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/test" in pytest_line
    assert "postgresql+psycopg://postgres@127.0.0.1:5432/test" in ci
