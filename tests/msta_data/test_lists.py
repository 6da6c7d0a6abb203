"""Video lists, class lists and the horizontal-flip default."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from msta.data import ClassSpecError, default_hflip, load_classes, read_video_list
from msta.video import DataError


def test_read_video_list_parses_paths_labels_and_skips_blank_lines(tmp_path: Path) -> None:
    f = tmp_path / "list.txt"
    f.write_text("a/b.mp4 3\n\n  c d/e f.avi 0  \n\r\nxyz.webm 12\n", encoding="utf-8")
    assert read_video_list(f) == [("a/b.mp4", 3), ("c d/e f.avi", 0), ("xyz.webm", 12)]


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("only_a_path.mp4", "expected '<relative path> <label id>'"),
        ("video.mp4 three", "label id 'three' is not an integer"),
        ("video.mp4 -1", "label id -1 is negative"),
        ("video.mp4 1.5", "not an integer"),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(f"ok.mp4 0\n\n{line}\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_video_list(f)
    msg = str(info.value)
    assert str(f) in msg and "line 3" in msg and reason in msg


def test_missing_and_non_utf8_lists(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_video_list(tmp_path / "nope.txt")
    f = tmp_path / "latin.txt"
    f.write_bytes(b"caf\xe9.mp4 1\n")
    with pytest.raises(DataError, match="not UTF-8"):
        read_video_list(f)


# Row counts as the data README gives them, with the class list each list's labels refer to.
B2N = "splits/base2novel"
LISTS: list[tuple[str, int, str]] = [
    *[(f"{B2N}/lists/k400/fs_base_s{s}_train.txt", 3200, f"{B2N}/k400_base.csv") for s in (1, 2, 3)],
    (f"{B2N}/lists/k400/base_val.txt", 9944, f"{B2N}/k400_base.csv"),
    (f"{B2N}/lists/k400/novel_val.txt", 9933, f"{B2N}/k400_novel.csv"),
    *[(f"{B2N}/lists/hmdb51/fs_base_s{s}_train.txt", 416, f"{B2N}/hmdb51_base.csv") for s in (1, 2, 3)],
    (f"{B2N}/lists/hmdb51/base_val.txt", 780, f"{B2N}/hmdb51_base.csv"),
    (f"{B2N}/lists/hmdb51/novel_val.txt", 750, f"{B2N}/hmdb51_novel.csv"),
    (f"{B2N}/lists/hmdb51/base_train.txt", 1820, f"{B2N}/hmdb51_base.csv"),
    *[(f"{B2N}/lists/ucf101/fs_base_s{s}_train.txt", 816, f"{B2N}/ucf101_base.csv") for s in (1, 2, 3)],
    (f"{B2N}/lists/ucf101/base_val.txt", 2088, f"{B2N}/ucf101_base.csv"),
    (f"{B2N}/lists/ucf101/novel_val.txt", 1695, f"{B2N}/ucf101_novel.csv"),
    (f"{B2N}/lists/ucf101/base_train.txt", 5385, f"{B2N}/ucf101_base.csv"),
    *[(f"{B2N}/lists/ssv2/fs_base_s{s}_train.txt", 1392, f"{B2N}/ssv2_base.csv") for s in (1, 2, 3)],
    (f"{B2N}/lists/ssv2/base_val.txt", 17562, f"{B2N}/ssv2_base.csv"),
    (f"{B2N}/lists/ssv2/novel_val.txt", 7215, f"{B2N}/ssv2_novel.csv"),
    *[
        (f"splits/fewshot/{ds}/train1_few_shot_{k}.txt", k * n, f"labels/{ds}.csv")
        for ds, n in (("hmdb51", 51), ("ucf101", 101), ("ssv2", 174))
        for k in (2, 4, 8, 16)
    ],
    *[(f"splits/eval/hmdb51/val{i}.txt", 1530, "labels/hmdb51.csv") for i in (1, 2, 3)],
    ("splits/eval/ucf101/val1.txt", 3783, "labels/ucf101.csv"),
    ("splits/eval/ucf101/val2.txt", 3734, "labels/ucf101.csv"),
    ("splits/eval/ucf101/val3.txt", 3696, "labels/ucf101.csv"),
    ("splits/eval/k400/val.txt", 19877, "labels/k400.csv"),
    ("splits/eval/ssv2/validation.txt", 24777, "labels/ssv2.csv"),
    ("splits/k600_zeroshot/lists/split1_eval.txt", 14084, "splits/k600_zeroshot/split1.csv"),
    ("splits/k600_zeroshot/lists/split2_eval.txt", 13978, "splits/k600_zeroshot/split2.csv"),
    ("splits/k600_zeroshot/lists/split3_eval.txt", 14136, "splits/k600_zeroshot/split3.csv"),
]


@pytest.mark.parametrize(("rel", "rows", "classes"), LISTS, ids=[rel for rel, _, _ in LISTS])
def test_standard_split_lists_parse_with_documented_counts(
    shared_data: Path, rel: str, rows: int, classes: str
) -> None:
    items = read_video_list(shared_data / rel)
    assert len(items) == rows
    names = load_classes(str(shared_data / classes))
    labels = Counter(label for _, label in items)
    assert max(labels) < len(names)
    assert len({p for p, _ in items}) == rows  # no video listed twice
    if "few_shot" in rel or "fs_base" in rel:
        # K shots for every class of the list's class set
        assert set(labels) == set(range(len(names)))
        assert set(labels.values()) == {rows // len(names)}


def test_every_list_file_in_the_data_directory_is_covered(shared_data: Path) -> None:
    found = {str(p.relative_to(shared_data)) for p in (shared_data / "splits").rglob("*.txt")}
    assert found == {rel for rel, _, _ in LISTS}


@pytest.mark.parametrize(
    ("rel", "count", "first"),
    [
        ("splits/base2novel/k400_base.csv", 200, "getting a tattoo"),
        ("splits/base2novel/ssv2_novel.csv", 87, None),
        ("splits/k600_zeroshot/split2.csv", 160, None),
        ("labels/ucf101.csv", 101, "Apply Eye Makeup"),
    ],
)
def test_load_classes_reads_split_csvs_with_extra_columns(
    shared_data: Path, rel: str, count: int, first: str | None
) -> None:
    names = load_classes(str(shared_data / rel))
    assert len(names) == count and len(set(names)) == count
    if first is not None:
        assert names[0] == first
    assert not any(n.isdigit() for n in names)  # the name column, not an id column


def test_load_classes_by_dataset_name(shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert len(load_classes("hmdb51", data_dir=shared_data)) == 51
    monkeypatch.setenv("MSTA_DATA_DIR", str(shared_data))
    assert len(load_classes("k400")) == 400
    with pytest.raises(ClassSpecError, match="unknown dataset"):
        load_classes("no-such-dataset")
    with pytest.raises(DataError):
        load_classes(str(shared_data / "missing.csv"))


def test_load_classes_inline_list() -> None:
    assert load_classes("jumping, running ,swimming") == ["jumping", "running", "swimming"]
    with pytest.raises(ClassSpecError, match="twice"):
        load_classes("a,b,A")
    with pytest.raises(ClassSpecError, match="empty"):
        load_classes("a,,b")


def test_default_hflip(shared_data: Path, tmp_path: Path) -> None:
    assert default_hflip("ssv2") is False
    assert default_hflip(str(shared_data / "labels" / "ssv2.csv")) is False
    assert default_hflip(str(shared_data / "splits/base2novel/ssv2_base.csv")) is False
    for name in ("k400", "k600", "hmdb51", "ucf101"):
        assert default_hflip(name, data_dir=shared_data) is True
    assert default_hflip(str(shared_data / "labels" / "k400.csv")) is True
    directional = tmp_path / "mine.csv"
    directional.write_text("id,name\n0,pushing a car to the left\n1,waving\n", encoding="utf-8")
    assert default_hflip(str(directional)) is False
    plain = tmp_path / "plain.csv"
    plain.write_text("id,name\n0,juggling\n1,waving\n", encoding="utf-8")
    assert default_hflip(str(plain)) is True
