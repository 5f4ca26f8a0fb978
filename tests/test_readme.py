"""The README's quickstart runs exactly as written."""

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


def test_batch_example_runs(tmp_path: Path) -> None:
    (block,) = python_blocks("Many merges at once: `ReferencesSession`")
    script = tmp_path / "batch.py"
    script.write_text(block)
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["900", "100", "20"]


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
