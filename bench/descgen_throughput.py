"""Throughput of ``descgen generate`` against a loopback OpenAI-compatible server.

The server runs in its own process (so that it does not compete with the client for the GIL) and
answers every request after a fixed latency (200 ms by default). For each concurrency
the script generates a fresh cache and reports wall time and efficiency = ideal / measured, where
ideal = ceil(classes / concurrency) * latency (no schedule can do
better: at most `concurrency` requests are in flight, each takes `latency`). It then re-runs the last (fully cached) job twice: through
the Python function and as a real ``descgen generate`` process.

    python bench/descgen_throughput.py            # 400 classes at 8 and 32, 50 classes at 1
    python bench/descgen_throughput.py --c1-classes 400

With ``--rate-limit RPM,TPM`` the server enforces those per-minute limits (token buckets holding a
minute's worth, refilled continuously, as the hosted API does) and reports them in the
``x-ratelimit-*`` headers; the script then runs one job that outlasts the first minute's burst and
reports the rate sustained after it, against the allowed rate, and the share of 429 answers:

    python bench/descgen_throughput.py --rate-limit 600,1000000 --duration 40
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from descgen.generate import generate  # noqa: E402
from tests.descgen.fake_openai import DEFAULT_KEY  # noqa: E402


class ServerProcess:
    """The loopback server of the tests, started as a separate process."""

    def __init__(self, latency: float, rate_limit: str | None = None):
        cmd = [sys.executable, "-m", "tests.descgen.fake_openai", "--latency", str(latency)]
        if rate_limit:
            cmd = [sys.executable, "-m", "tests.descgen.fake_ratelimit", "--latency", str(latency)]
            cmd += ["--rate-limit", rate_limit]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.proc.kill()
            raise RuntimeError(f"the loopback server did not start: {self.url!r}")
        self.api_key = DEFAULT_KEY
        self.root = self.url.rsplit("/v1", 1)[0]

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.root + path, timeout=10) as r:
            return json.loads(r.read())

    def reset_log(self) -> None:
        self._get("/_reset")

    def count(self) -> int:
        return int(self._get("/_stats")["requests"])

    def stats(self) -> dict:
        return self._get("/_stats")

    @property
    def max_in_flight(self) -> int:
        return int(self._get("/_stats")["max_in_flight"])

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _class_file(directory: Path, count: int) -> Path:
    path = directory / f"bench{count}.csv"
    path.write_text("id,name\n" + "".join(f"{i},benchmark action {i}\n" for i in range(count)))
    return path


def _concurrency_run(fake: ServerProcess, tmpdir: Path, count: int, conc: int, latency: float) -> tuple:
    """Generate ``count`` classes at concurrency ``conc`` into a new cache; one row of the table."""
    classes = _class_file(tmpdir, count)
    cache = tmpdir / f"c{conc}.db"
    fake.reset_log()
    c0 = time.process_time()
    t0 = time.perf_counter()
    s = generate(
        classes_file=classes,
        dataset="bench",
        cache=cache,
        base_url=fake.url,
        model="fake-model",
        concurrency=conc,
        timeout=30,
    )
    wall = time.perf_counter() - t0
    cpu_ms = (time.process_time() - c0) / count * 1000
    assert s.done == count and s.failed == 0, s.line()
    ideal = math.ceil(count / conc) * latency
    return (f"concurrency {conc}", count, fake.count(), fake.max_in_flight, wall, ideal, ideal / wall, cpu_ms)


def _cached_runs(fake: ServerProcess, classes: Path, cache: Path, count: int) -> list[tuple]:
    """Re-run a complete set, as the Python function and as a ``descgen generate`` process."""
    fake.reset_log()
    t0 = time.perf_counter()
    s = generate(classes_file=classes, dataset="bench", cache=cache, base_url=fake.url, model="fake-model")
    wall = time.perf_counter() - t0
    assert s.cached == count and fake.count() == 0
    rows = [("cached re-run (function)", count, fake.count(), 0, wall, None, None, None)]
    script = Path(sys.executable).with_name("descgen")
    cmd = [str(script)] if script.exists() else [sys.executable, "-c", "from descgen.cli import main; main()"]
    cmd += ["generate", "--classes", str(classes), "--dataset", "bench", "--cache", str(cache)]
    cmd += ["--base-url", fake.url, "--model", "fake-model"]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    wall = time.perf_counter() - t0
    assert r.returncode == 0 and f"{count} cached" in r.stdout, r.stdout + r.stderr
    rows.append(("cached re-run (process)", count, fake.count(), 0, wall, None, None, None))
    return rows


def _rate_limited_run(args: argparse.Namespace, fake: ServerProcess, tmpdir: Path) -> None:
    """One job of a minute's burst plus ``duration`` seconds at the allowed rate; the figures."""
    rpm, tpm = (int(x) for x in args.rate_limit.split(","))
    count = args.classes if args.classes_given else int(rpm + rpm / 60 * args.duration)
    fake.reset_log()
    t0 = time.perf_counter()
    s = generate(
        classes_file=_class_file(tmpdir, count),
        dataset="bench",
        cache=tmpdir / "limited.db",
        base_url=fake.url,
        model="fake-model",
        concurrency=args.concurrency[-1],
        timeout=30,
    )
    wall = time.perf_counter() - t0
    st = fake.stats()
    span = (st["last_ok"] or 0) - (st["first_ok"] or 0)
    replies = st["ok"] + st["limited"]
    tokens = st.get("tokens_used", 0)
    print(f"descgen generate against a loopback server limited to {rpm} requests/min and {tpm} tokens/min")
    print(
        f"({args.latency * 1000:.0f} ms per request, concurrency {args.concurrency[-1]}, {os.cpu_count()} CPUs)"
    )
    print(f"classes {count}: {s.done} done, {s.failed} failed, wall {wall:.1f} s")
    print(
        f"answers {replies}: {st['ok']} ok, {st['limited']} 429 ({100 * st['limited'] / max(1, replies):.2f} %)"
    )
    if span > 0:
        # After the first minute's burst (the full bucket), the server allows rpm/60 a second.
        sustained = (st["ok"] - st["burst"]) / span
        allowed = st["allowed_rate"]
        print(
            f"sustained after the burst: {sustained:.2f} requests/s of {allowed:.2f} allowed "
            f"({100 * sustained / allowed:.1f} %), over {span:.1f} s; tokens used {tokens}"
        )
    assert s.done == count and s.failed == 0, s.line()


def _print_table(args: argparse.Namespace, rows: list[tuple]) -> None:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"descgen generate against a loopback server, {args.latency * 1000:.0f} ms per request "
        f"({os.cpu_count()} CPUs, load average {load:.1f} at the end; after a 2-class warm-up run)"
    )
    if args.c1_classes != args.classes and 1 in args.concurrency:
        print(f"(concurrency 1 uses {args.c1_classes} classes to keep the run short)")
    header = ("classes", "requests", "max in flight", "wall s", "ideal s", "efficiency", "CPU ms/class")
    print(f"{'run':<26} " + " ".join(f"{h:>8}" for h in header))
    for name, count, reqs, peak, wall, ideal, eff, cpu in rows:
        cells = [
            f"{count:>7}",
            f"{reqs:>8}",
            f"{peak:>13}",
            f"{wall:>8.2f}",
            f"{ideal:>8.2f}" if ideal is not None else f"{'-':>8}",
            f"{eff:>10.3f}" if eff is not None else f"{'-':>10}",
            f"{cpu:>12.2f}" if cpu is not None else f"{'-':>12}",
        ]
        print(f"{name:<26} " + " ".join(cells))
    print(
        "CPU ms/class: CPU time of this process per class (client, validation, SQLite); the server runs apart"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=None, help="classes per run (default 400)")
    ap.add_argument("--c1-classes", type=int, default=50, help="classes for concurrency 1 (400 takes 80 s)")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rate-limit", default=None, metavar="RPM,TPM", help="a server with these limits")
    ap.add_argument("--duration", type=float, default=40.0, help="seconds past the burst (--rate-limit)")
    args = ap.parse_args()
    args.classes_given = args.classes is not None
    args.classes = args.classes or 400

    rows = []
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(args.latency, args.rate_limit) as fake:
        tmpdir = Path(tmp)
        os.environ["OPENAI_API_KEY"] = fake.api_key
        # Warm-up: imports (openai alone takes about a second) and the first connection.
        generate(
            classes_file=_class_file(tmpdir, 2),
            dataset="warmup",
            cache=tmpdir / "warmup.db",
            base_url=fake.url,
            model="fake-model",
        )
        if args.rate_limit:
            _rate_limited_run(args, fake, tmpdir)
            return
        for conc in args.concurrency:
            count = args.c1_classes if conc == 1 else args.classes
            rows.append(_concurrency_run(fake, tmpdir, count, conc, args.latency))
        last_count = rows[-1][1]
        last_conc = args.concurrency[-1]
        rows += _cached_runs(fake, _class_file(tmpdir, last_count), tmpdir / f"c{last_conc}.db", last_count)
    _print_table(args, rows)


if __name__ == "__main__":
    main()
