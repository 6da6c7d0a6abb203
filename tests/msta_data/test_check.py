"""check_list: counts, missing files, videos that do not decode, labels out of range."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from msta.checks import check_list
from msta.data import read_video_list
from msta.synth import synth_dataset
from msta.video import DataError


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("check") / "ds"
    synth_dataset(out, videos_per_class=2, val_per_class=0, frames=8, size=32, seed=2)
    return out


def test_clean_list(synth: Path) -> None:
    report = check_list(synth / "train.txt", synth, num_classes=4, workers=2)
    assert report.ok and report.problems == 0
    assert report.total == 8 and report.per_class == {0: 2, 1: 2, 2: 2, 3: 2}
    assert report.checked_decoding == 8 and report.empty_classes == []
    d = report.to_dict()
    assert d["ok"] is True and d["per_class"] == {"0": 2, "1": 2, "2": 2, "3": 2}


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_finds_missing_corrupt_out_of_range_and_malformed(synth: Path, tmp_path: Path, decoder: str) -> None:
    pytest.importorskip(decoder if decoder == "decord" else "av")
    root = tmp_path / "ds"
    shutil.copytree(synth, root)
    items = read_video_list(root / "train.txt")
    (root / items[3][0]).write_bytes((root / items[3][0]).read_bytes()[:400])  # truncated
    (root / "frames_ok").mkdir()
    lines = [f"{p} {label}" for p, label in items]
    lines += [
        "videos/train/missing.mp4 1",  # line 9
        f"{items[0][0]} 4",  # line 10: out of range (and a duplicate of line 1)
        "just-a-path",  # line 11: malformed
        "frames_ok 0",  # line 12: an empty frame folder cannot be read
    ]
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    progress: list[tuple[int, int]] = []
    report = check_list(
        root / "list.txt",
        root,
        num_classes=4,
        decoder=decoder,
        workers=2,
        progress=lambda d, t: progress.append((d, t)),
    )
    assert not report.ok and report.problems == 5
    assert [m["line"] for m in report.missing] == [9]
    assert sorted(u["line"] for u in report.unreadable) == [4, 12]
    assert [(o["line"], o["label"]) for o in report.out_of_range] == [(10, 4)]
    assert [m["line"] for m in report.malformed] == [11]
    assert [(d["line"], d["first_line"]) for d in report.duplicates] == [(10, 1)]
    assert report.per_class[4] == 1 and report.total == 11
    assert progress[0] == (0, 9) and progress[-1] == (9, 9)  # 9 distinct existing paths probed
    assert "1 missing, 2 unreadable, 1 labels out of range, 1 malformed lines" in report.summary()


def test_empty_classes_and_first_frame_mode(synth: Path) -> None:
    report = check_list(synth / "train.txt", synth, num_classes=6, num_frames=1)
    assert report.ok and report.empty_classes == [4, 5]


def test_unusable_input_raises(synth: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        check_list(synth / "train.txt", synth / "nope")
    with pytest.raises(DataError, match="not found"):
        check_list(synth / "nope.txt", synth)
    with pytest.raises(DataError, match="unknown decoder"):
        check_list(synth / "train.txt", synth, decoder="x")
