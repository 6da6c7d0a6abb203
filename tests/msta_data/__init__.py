"""Tests of the video data pipeline (lists, sampling, decoding, transforms, dataset, synthetic data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_frames_video(
    path: Path, frames: np.ndarray, fps: int = 25, gop: int | None = None, codec: str = "libx264"
) -> None:
    """Encode uint8 frames [T, H, W, 3] with a chosen keyframe interval (for seek tests)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.codec_context.thread_count = 1
        if gop is not None:
            stream.options = {"g": str(gop), "crf": "12", "preset": "ultrafast"}
        for arr in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def counter_frames(n: int, size: int = 64) -> np.ndarray:
    """Frames that carry their own index: bit b of frame i is a black or white 8x8 block (16 bits in
    the top two block rows), robust to lossy compression."""
    out = np.full((n, size, size, 3), 128, np.uint8)
    for i in range(n):
        for b in range(16):
            r, c = divmod(b, size // 8)
            out[i, r * 8 : r * 8 + 8, c * 8 : c * 8 + 8] = 255 if (i >> b) & 1 else 0
    return out


def read_counter(frame: np.ndarray) -> int:
    """The index carried by a (decoded) counter frame."""
    size = frame.shape[1]
    value = 0
    for b in range(16):
        r, c = divmod(b, size // 8)
        if frame[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8].mean() > 128:
            value |= 1 << b
    return value
