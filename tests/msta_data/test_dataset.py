"""VideoDataset: determinism, replacement of unreadable videos, DataLoader workers, multi-view."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from msta.data import VideoDataset, read_video_list
from msta.synth import synth_dataset
from msta.video import DataError
from msta.views import ViewsError


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ds") / "synth"
    synth_dataset(
        out, videos_per_class=3, val_per_class=2, frames=12, size=64, seed=1
    )  # decord cannot decode 48 px wide videos
    return out


def make(synth: Path, train: bool = True, **kw) -> VideoDataset:
    items = read_video_list(synth / ("train.txt" if train else "val.txt"))
    args = dict(root=synth, num_frames=4, train=train, input_size=32, hflip=False, seed=7)
    args.update(kw)
    return VideoDataset(items, **args)


def test_sample_layout(synth: Path) -> None:
    ds = make(synth)
    assert isinstance(ds, torch.utils.data.Dataset) and len(ds) == 12
    s = ds[5]
    assert s["video"].shape == (4, 3, 32, 32) and s["video"].dtype == torch.float32
    assert s["label"] == ds.items[5][1] and s["index"] == 5 and s["source"] == 5 and s["skipped"] == 0


@pytest.mark.parametrize(("train", "views"), [(True, (1, 1)), (False, (1, 1)), (False, (2, 3))])
def test_deferred_colour_gives_the_same_clips_after_finishing(synth: Path, train: bool, views) -> None:
    from msta.transforms import batch_video

    eager, deferred = make(synth, train, views=views), make(synth, train, views=views, defer_colour=True)
    for i in range(len(eager)):
        a, b = eager[i], deferred[i]
        assert b["video"].dtype == torch.uint8 and "colour" not in a
        assert b["colour"].shape == (*b["video"].shape[:-4], 3, 9)
        assert torch.allclose(batch_video(b, "cpu"), a["video"], atol=1e-5)
    loader = torch.utils.data.DataLoader(deferred, batch_size=4, num_workers=0)
    batch = next(iter(loader))
    assert torch.allclose(
        batch_video(batch, "cpu"), torch.stack([eager[i]["video"] for i in range(4)]), atol=1e-5
    )


def test_samples_are_a_function_of_seed_epoch_and_index(synth: Path) -> None:
    a, b = make(synth), make(synth)
    # order of access does not matter
    first = [a[i]["video"] for i in range(6)]
    later = [b[i]["video"] for i in reversed(range(6))][::-1]
    assert all(torch.equal(x, y) for x, y in zip(first, later, strict=True))
    a.set_epoch(1)
    assert not torch.equal(a[0]["video"], first[0])
    b.set_epoch(1)
    assert torch.equal(a[0]["video"], b[0]["video"])
    assert torch.equal(a[(0, 3)]["video"], first[3])  # (epoch, index) keys
    assert not torch.equal(make(synth, seed=8)[0]["video"], first[0])


def test_evaluation_is_the_same_every_epoch(synth: Path) -> None:
    ds = make(synth, train=False)
    x = ds[1]["video"]
    ds.set_epoch(5)
    assert torch.equal(ds[1]["video"], x)


def test_multi_view_evaluation(synth: Path) -> None:
    ds = make(synth, train=False, views=(2, 3))
    v = ds[0]["video"]
    assert v.shape == (6, 4, 3, 32, 32)
    assert not torch.equal(v[0], v[3])  # different clips
    single = make(synth, train=False, views=(1, 1))[0]["video"]
    assert v.shape[1:] == single.shape
    assert make(synth, train=False, views=(3, 1))[0]["video"].shape == (3, 4, 3, 32, 32)
    with pytest.raises(DataError):
        make(synth, train=True, views=(2, 1))
    assert make(synth, train=False, views="2x3").views == (2, 3)  # parsed by msta.views
    for bad in ((2, 2), (0, 1), "4x"):
        with pytest.raises(ViewsError):
            make(synth, train=False, views=bad)


def test_unreadable_video_is_replaced_and_counted(
    synth: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "copy"
    shutil.copytree(synth, root)
    items = read_video_list(root / "train.txt")
    (root / items[2][0]).write_bytes(b"\x00" * 1000)  # corrupt
    (root / items[4][0]).unlink()  # missing
    ds = make(root)
    with caplog.at_level(logging.WARNING, logger="msta.data"):
        s2 = ds[2]
        s2_again = ds[2]
        s4 = ds[4]
    assert s2["skipped"] >= 1 and s4["skipped"] >= 1
    assert s2["source"] not in (2, 4) and s4["source"] not in (2, 4)
    assert s2["label"] == items[s2["source"]][1]
    assert torch.equal(s2["video"], s2_again["video"])  # replacement is deterministic
    warned = [r.getMessage() for r in caplog.records if "skipping unreadable video" in r.getMessage()]
    assert len([w for w in warned if items[2][0] in w]) == 1  # logged once per path
    assert any(items[4][0] in w for w in warned)
    assert ds[3]["skipped"] == 0


def test_all_videos_unreadable_raises_after_max_retries(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"v{i}.mp4").write_bytes(b"junk")
    ds = VideoDataset([(f"v{i}.mp4", 0) for i in range(3)], tmp_path, 4, True, 32, False, max_retries=4)
    with pytest.raises(DataError, match="5 videos in a row could not be read"):
        ds[0]


def test_bad_arguments(synth: Path) -> None:
    with pytest.raises(DataError, match="unknown decoder"):
        make(synth, decoder="nope")
    with pytest.raises(DataError, match="empty"):
        VideoDataset([], synth, 4, True, 32, False)


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_dataloader_workers_give_identical_batches(synth: Path, decoder: str) -> None:
    pytest.importorskip(decoder if decoder != "pyav" else "av")
    ds = make(synth, decoder=decoder)

    def batches(workers: int, epoch: int) -> list[dict]:
        ds.set_epoch(epoch)
        g = torch.Generator().manual_seed(123 + epoch)
        loader = DataLoader(ds, batch_size=4, shuffle=True, generator=g, num_workers=workers)
        return list(loader)

    for epoch in (0, 1):
        serial, parallel = batches(0, epoch), batches(2, epoch)
        assert len(serial) == len(parallel) == 3
        for a, b in zip(serial, parallel, strict=True):
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
            assert torch.equal(a["video"], b["video"])
    assert not torch.equal(batches(0, 0)[0]["video"], batches(0, 1)[0]["video"])


def test_persistent_workers_follow_set_epoch(synth: Path) -> None:
    ds = make(synth)
    expected = []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        expected.append(torch.stack([ds[i]["video"] for i in range(len(ds))]))
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        got = torch.cat([b["video"] for b in loader])
        assert torch.equal(got, expected[epoch])


def test_dataset_pickles_and_copies(synth: Path) -> None:
    import copy
    import pickle

    ds = make(synth)
    ds.set_epoch(3)
    for clone in (pickle.loads(pickle.dumps(ds)), copy.deepcopy(ds)):
        assert clone.epoch == 3 and torch.equal(clone[1]["video"], ds[1]["video"])


def test_loading_in_the_main_process_restores_the_thread_count(synth: Path) -> None:
    ds = make(synth)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        a = ds[0]["video"]
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert torch.equal(ds[0]["video"], a)  # same result whatever the thread count
    finally:
        torch.set_num_threads(before)


def test_labels_follow_the_list(synth: Path) -> None:
    ds = make(synth, train=False)
    assert ds.labels == [label for _, label in read_video_list(synth / "val.txt")]
    assert sorted(set(ds.labels)) == [0, 1, 2, 3]
    np.testing.assert_equal(len(ds), 8)
