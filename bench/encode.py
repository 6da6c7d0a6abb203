"""Text-encoding throughput with and without the end-of-text context cut.

Encodes MSTA-shaped sentences (taken from the published MSTA description files, spatial and
temporal mixed) with a frozen open_clip text tower with random weights, on the CPU, and prints
descriptions per second for both ways and their ratio. The two are measured side by side in the
same process, alternating batch by batch, on the batches that ``descgen encode`` forms (texts
sorted by token length).

    python bench/encode.py [--model ViT-B-16] [--texts 1024] [--batch-size 256] [--repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def msta_sentences(data: Path, count: int, seed: int = 0) -> list[str]:
    texts: list[str] = []
    for name in (
        "k400_spatial_2.json",
        "k400_temporal_2.json",
        "ssv2_spatial_2.json",
        "ssv2_temporal_2.json",
    ):
        path = data / "descriptions" / "msta" / name
        if path.is_file():
            for values in json.loads(path.read_text(encoding="utf-8")).values():
                texts.extend(values)
    if not texts:
        raise SystemExit(f"no MSTA description files under {data}/descriptions/msta (set MSTA_SHARED_DATA)")
    random.Random(seed).shuffle(texts)
    return (texts * (count // len(texts) + 1))[:count]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--texts", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    ap.add_argument(
        "--data", default=os.environ.get("MSTA_SHARED_DATA", str(REPO.parent / "shared" / "data"))
    )
    args = ap.parse_args()

    import torch

    from descgen.encode import RandomWeightsWarning, load_text_encoder

    if args.threads:
        torch.set_num_threads(args.threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomWeightsWarning)
        enc = load_text_encoder(args.model, "none")
    texts = msta_sentences(Path(args.data), args.texts)
    tokens = enc.tokenizer(texts)
    lengths = (tokens != 0).sum(dim=-1).float()
    print(
        f"model {args.model} (random weights), {len(texts)} MSTA-shaped sentences, "
        f"tokens mean {lengths.mean():.1f} / max {int(lengths.max())} of context {enc.context_length}, "
        f"batch {args.batch_size}, torch threads {torch.get_num_threads()}"
    )
    from descgen.encode import encode_tokens

    # Batches as encode_missing forms them: texts sorted by token length, then cut in batches.
    order = torch.argsort((tokens != 0).sum(dim=-1), stable=True)
    batches = [tokens[order[i : i + args.batch_size]] for i in range(0, len(texts), args.batch_size)]
    model = enc.model
    with torch.inference_mode():
        encode_tokens(model, batches[0][:8], cut=True)  # warm-up
        encode_tokens(model, batches[0][:8], cut=False)
        wall = {True: 0.0, False: 0.0}
        cpu = {True: 0.0, False: 0.0}
        worst = 0.0
        # The two ways alternate batch by batch (and swap order each time), so that a change in the
        # load of the machine hits both alike.
        for rep in range(args.repeats):
            for b, batch in enumerate(batches):
                outs = {}
                for cut in (True, False) if (b + rep) % 2 == 0 else (False, True):
                    w0, c0 = time.perf_counter(), time.process_time()
                    outs[cut] = encode_tokens(model, batch, cut=cut)
                    wall[cut] += time.perf_counter() - w0
                    cpu[cut] += time.process_time() - c0
                worst = max(worst, (outs[True] - outs[False]).abs().max().item())
    assert worst < 1e-4, f"cut and full context disagree: max abs diff {worst}"
    n = len(texts) * args.repeats
    rate_cut, rate_full = n / wall[True], n / wall[False]
    print(f"with cut:    {rate_cut:8.1f} descriptions/s (wall {wall[True]:.1f} s, CPU {cpu[True]:.1f} s)")
    print(f"without cut: {rate_full:8.1f} descriptions/s (wall {wall[False]:.1f} s, CPU {cpu[False]:.1f} s)")
    print(
        f"speed-up:    {rate_cut / rate_full:8.2f}x wall, {cpu[False] / cpu[True]:.2f}x CPU time "
        f"(goal >= 2.5x); max abs diff {worst:.2e}"
    )


if __name__ == "__main__":
    main()
