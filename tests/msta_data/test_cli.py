"""The ``msta data`` commands: in process through the ``msta_cli`` fixture, and once per command as a real
subprocess (the error path of the installed entry point ends without a traceback)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from msta.data import read_video_list


def test_synth_and_check(msta_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    r = msta_cli(["data", "synth", "--out", "ds", "--videos-per-class", "2", "--val-per-class", "1"])
    assert r.returncode == 0, r.stderr
    assert "Wrote 8 training and 4 validation videos of 4 classes" in r.stdout
    ds = tmp_path / "ds"
    check = ("data", "check", "--list", "ds/train.txt", "--root", "ds", "--classes", "ds/classes.csv")
    r = msta_cli(check)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1].startswith("OK: 8 videos, 4 classes of 4, 0 missing")

    # now break it: a missing file, a corrupt file, a label out of range, a malformed line
    items = read_video_list(ds / "train.txt")
    (ds / items[1][0]).write_bytes((ds / items[1][0]).read_bytes()[:500])
    with open(ds / "train.txt", "a", encoding="utf-8") as f:
        f.write("videos/train/gone.mp4 0\n")
        f.write(f"{items[0][0]} 9\n")
        f.write("no-label-here\n")
    r = msta_cli(check)
    assert r.returncode == 1
    assert "missing: line 9: videos/train/gone.mp4" in r.stderr
    assert f"unreadable: line 2: {items[1][0]}" in r.stderr
    assert f"label out of range: line 10: {items[0][0]}: label 9" in r.stderr
    assert "malformed line: line 11" in r.stderr
    assert "Traceback" not in r.stderr
    r = msta_cli([*check, "--json"])
    assert r.returncode == 1
    report = json.loads(r.stdout)
    assert report["ok"] is False and report["problems"] == 4
    assert [m["path"] for m in report["missing"]] == ["videos/train/gone.mp4"]
    assert [u["path"] for u in report["unreadable"]] == [items[1][0]]
    assert [(o["line"], o["label"]) for o in report["out_of_range"]] == [(10, 9)]


BAD_INPUT = [
    ["data", "check", "--list", "nope.txt", "--root", "."],
    ["data", "check", "--list", "list.txt", "--root", "no-dir"],
    ["data", "check", "--list", "list.txt", "--root", ".", "--classes", "no-such-dataset"],
    ["data", "check", "--list", "list.txt", "--root", ".", "--decoder", "magic"],
    ["data", "synth", "--out", "d", "--motions", "left_to_right"],
    ["data", "synth", "--out", "d", "--size", "33"],
]


@pytest.mark.parametrize("args", BAD_INPUT)
def test_bad_input_exits_2(
    msta_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    r = msta_cli(args)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert not (tmp_path / "d").exists()


def test_synth_into_a_file_exits_2(msta_cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("x")
    r = msta_cli(["data", "synth", "--out", "taken", "--videos-per-class", "1", "--val-per-class", "0"])
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {Path('taken')} exists and is not a directory"
    r = msta_cli(["data", "synth", "--out", "taken/ds"])  # its parent cannot be created
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error:") and "taken" in r.stderr


def msta_subprocess(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run(
        [sys.executable, "-c", "import sys; from msta.cli import main; sys.argv[0] = 'msta'; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["data", "check", "--list", "list.txt", "--root", "no-dir"],
        ["data", "synth", "--out", "d", "--size", "33"],
    ],
    ids=["check", "synth"],
)
def test_subprocess_error_has_no_traceback(tmp_path: Path, args: list[str]) -> None:
    (tmp_path / "list.txt").write_text("a.mp4 0\n")
    r = msta_subprocess(*args, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert r.stdout == ""
    assert not (tmp_path / "d").exists()
