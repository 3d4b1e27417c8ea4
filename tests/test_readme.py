"""The README's set-up commands are exercised here, so they cannot drift from what the code does."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from click.testing import CliRunner

from onnxconv.cli import main

ROOT = Path(__file__).resolve().parent.parent


def _first_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README must start with a code block holding the set-up commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_two_setup_commands() -> None:
    cmds = _first_commands()
    assert len(cmds) == 2
    assert cmds[0].startswith("pip install . && onnxconv ")
    assert "pytest" in cmds[1] and ".[test]" in cmds[1]


def test_readme_main_job_runs_on_a_shipped_model() -> None:
    job = _first_commands()[0].split("&&", 1)[1].strip()
    argv = shlex.split(job)
    assert argv[0] == "onnxconv"
    model = next(a for a in argv if a.endswith(".onnx"))
    assert (ROOT / model).is_file(), f"README runs on {model}, which is not in the repository"
    args = [str(ROOT / a) if a.endswith(".onnx") else a for a in argv[1:]]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "total:" in result.output and "MACs" in result.output


def test_ci_runs_the_readme_test_command() -> None:
    test_cmd = _first_commands()[1]
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_readme_python_example_runs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README has a Python API example"
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {}
    exec(compile(block.group(1), "README.md", "exec"), scope)  # noqa: S102 - the README's own example
    assert (tmp_path / "small.onnx").is_file()
    result = scope["result"]
    assert result.layers and any(c.rewritten for c in result.layers)  # type: ignore[attr-defined]
    assert scope["report"].totals["macs"] > 0  # type: ignore[attr-defined]


def test_readme_quick_start_chain_runs(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The quick start's stats -> separate -> bench chain, as written, on the shipped model."""
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", quick, re.S)
    assert block
    (tmp_path / "models").symlink_to(ROOT / "models")
    monkeypatch.chdir(tmp_path)
    commands = [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert [shlex.split(c)[1] for c in commands] == ["stats", "separate", "bench"]
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "onnxconv"
        result = CliRunner().invoke(main, argv[1:])
        assert result.exit_code == 0, (command, result.output)
    assert (tmp_path / "small.onnx").is_file()
