"""Rules of the house that span packages."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_descgen_generate_does_not_import_torch():
    code = (
        "import sys\n"
        "import descgen, descgen.cli, descgen.generate, descgen.store, descgen.datasets, descgen.prompts\n"
        "from descgen.cli import _register\n"
        "_register()\n"
        "import descgen.backends.openai_backend\n"
        "heavy = [m for m in ('torch', 'open_clip', 'vllm', 'msta') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"heavy modules imported: {out.stdout.strip()}"


def test_descgen_never_imports_msta():
    offenders = []
    for path in (REPO / "descgen").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            offenders += [
                f"{path.relative_to(REPO)}: {n}" for n in names if n == "msta" or n.startswith("msta.")
            ]
    assert offenders == []


def test_sql_only_in_store():
    keywords = ("SELECT ", "INSERT INTO", "CREATE TABLE", "DELETE FROM", "UPDATE ", "PRAGMA ")
    offenders = []
    for pkg in ("descgen", "msta"):
        for path in (REPO / pkg).rglob("*.py"):
            if path.name == "store.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    if any(node.value.lstrip().startswith(k) for k in keywords):
                        offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def _help_texts(command, path: str):
    """(where, text) of a click command's own help and of every option, through its subcommands."""
    yield path, command.help or ""
    for param in command.params:
        yield f"{path} {param.name}", getattr(param, "help", None) or ""
    for name, sub in getattr(command, "commands", {}).items():
        yield from _help_texts(sub, f"{path} {name}")


def test_help_texts_have_no_square_brackets_that_rich_would_swallow():
    """Typer renders help with rich markup, where ``[word ...]`` is a style tag and disappears."""
    import re

    import typer.main

    from descgen.cli import app as descgen_app
    from msta.cli import app as msta_app

    found = []
    for name, app in (("descgen", descgen_app), ("msta", msta_app)):
        for where, text in _help_texts(typer.main.get_command(app), name):
            found += [f"{where}: {text!r}" for _ in re.finditer(r"(?<!\\)\[[A-Za-z/]", text)]
    assert found == []
