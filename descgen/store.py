"""The SQLite cache: schema, migrations and every read and write of it.

This is the only module of the project that contains SQL. Everything else goes through the
functions and methods below.

Tables
------
meta          key/value; ``schema_version`` is the number of the last migration applied
migrations    one row per migration step applied: version, name, time
prompts       full canonical text of every prompt version used, keyed by its sha256 fingerprint
sets          a description set: (dataset, prompt, backend, model, sampling parameters, N)
generations   one row per LLM request (or per imported file entry), with raw response and status
descriptions  validated sentences, keyed by (set, class name, kind, index) -- never by class index
encoders      text encoders (model name + weights identity) used to embed descriptions
embeddings    float32 vectors as BLOBs keyed by (sha256 of the text, encoder fingerprint)

Opening
-------
``Store(path)`` opens for writing: it creates the file and the schema if needed and applies the
migrations this version knows. ``Store(path, readonly=True)`` opens an existing cache read-only
(``mode=ro``): it never creates, migrates or changes anything. ``Store(path, create=False)`` opens
an existing cache read-only and reopens it for writing at the first write (see
:meth:`Store.make_writable`), so a reader that finds everything it needs works on a read-only file.

Every open refuses, in one line, a file that is not a descgen cache, a cache written by a newer
version, and a corrupt file. Writers run ``PRAGMA quick_check`` before they write anything;
readers check the schema and the ``meta`` table on open, and every later read that meets a
damaged page ends in the same one-line error.

Writers use WAL mode with a busy timeout, and each class's result is written in one
transaction, so a killed process never leaves a half-written class behind and two writers wait
for each other instead of failing. The last writer to close switches the file back to a rollback
journal, so a cache at rest has no ``-wal``/``-shm`` files and read-only openers create none.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sqlite3
import time
import types
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from descgen.errors import DescgenError

if TYPE_CHECKING:  # imported at the first write only: it imports numpy, which reading does not need
    import sqlite_utils

KINDS = ("spatial", "temporal")
MIN_READABLE_VERSION = 1  # readers accept caches from this schema version up to SCHEMA_VERSION
BUSY_TIMEOUT_MS = 30_000


class StoreError(DescgenError):
    """A problem with the cache file that the user can fix (wrong path, not a cache, ...)."""


def text_hash(text: str) -> str:
    """Key of a description text in the embeddings table."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _now() -> float:
    return time.time()


# ---------------------------------------------------------------------- migrations


@dataclass(frozen=True)
class Migration:
    """One step of the schema: applied once, in its own transaction, and recorded."""

    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


def _initial_schema(db: sqlite_utils.Database) -> None:
    db["meta"].create({"key": str, "value": str}, pk="key", if_not_exists=True)
    db["prompts"].create(
        {"fingerprint": str, "name": str, "version": str, "content": str, "created_at": float},
        pk="fingerprint",
        not_null={"name", "content"},
    )
    db["sets"].create(
        {
            "id": str,
            "dataset": str,
            "prompt_fp": str,
            "backend": str,
            "model": str,
            "params": str,
            "n": int,
            "source": str,
            "created_at": float,
        },
        pk="id",
        not_null={"dataset", "prompt_fp", "backend", "model", "params", "n"},
    )
    db["sets"].create_index(["dataset"])
    _create_generations(db)
    _create_descriptions(db)
    _create_embeddings(db)


def _create_generations(db: sqlite_utils.Database) -> None:
    db["generations"].create(
        {
            "id": int,
            "set_id": str,
            "dataset": str,
            "class_name": str,
            "class_id": int,
            "prompt_fp": str,
            "backend": str,
            "model": str,
            "params": str,
            "attempt": int,
            "seed": int,
            "request": str,
            "raw_response": str,
            "status": str,
            "error": str,
            "prompt_tokens": int,
            "completion_tokens": int,
            "latency_s": float,
            "created_at": float,
        },
        pk="id",
        foreign_keys=[("set_id", "sets", "id")],
        not_null={"set_id", "class_name", "status"},
    )
    db["generations"].create_index(["set_id", "class_name"])
    db["generations"].create_index(["status"])


def _create_descriptions(db: sqlite_utils.Database) -> None:
    db["descriptions"].create(
        {
            "id": int,
            "set_id": str,
            "class_name": str,
            "kind": str,
            "idx": int,
            "text": str,
            "text_hash": str,
            "phrase": str,
            "generation_id": int,
        },
        pk="id",
        foreign_keys=[("set_id", "sets", "id"), ("generation_id", "generations", "id")],
        not_null={"set_id", "class_name", "kind", "idx", "text", "text_hash"},
    )
    db["descriptions"].create_index(["set_id", "class_name", "kind", "idx"], unique=True)
    db["descriptions"].create_index(["text_hash"])


def _create_embeddings(db: sqlite_utils.Database) -> None:
    db["encoders"].create(
        {
            "fingerprint": str,
            "model_name": str,
            "pretrained": str,
            "weights_hash": str,
            "context_length": int,
            "dim": int,
            "random_weights": int,
            "created_at": float,
        },
        pk="fingerprint",
    )
    db["embeddings"].create(
        {
            "text_hash": str,
            "encoder_fp": str,
            "dim": int,
            "dtype": str,
            "vector": bytes,
            "n_tokens": int,
            "truncated": int,
            "created_at": float,
        },
        pk=("text_hash", "encoder_fp"),
        foreign_keys=[("encoder_fp", "encoders", "fingerprint")],
    )


def _one_answer_per_class(db: sqlite_utils.Database) -> None:
    """At most one current ('ok') answer per class of a set, enforced by the file itself."""
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_generations_one_ok ON generations (set_id, class_name) "
        "WHERE status = 'ok'"
    )


def _batch_bookkeeping(db: sqlite_utils.Database) -> None:
    """Batches sent to a batch API or written as a batch file, their requests, and line provenance."""
    db["batches"].create(
        {
            "id": str,  # the provider's batch id, or "file:<sha256>" for a batch file
            "kind": str,  # "api" or "file"
            "backend": str,
            "model": str,
            "input_file_id": str,
            "output_file_id": str,
            "error_file_id": str,
            "path": str,
            "status": str,
            "requests": int,
            "completed": int,
            "failed": int,
            "created_at": float,
            "updated_at": float,
            "collected_at": float,
        },
        pk="id",
        not_null={"kind", "backend", "model", "status"},
    )
    db["batch_requests"].create(
        {
            "batch_id": str,
            "custom_id": str,
            "set_id": str,
            "class_name": str,
            "class_id": int,
            "round": int,
            "request": str,
        },
        pk=("batch_id", "custom_id"),
        foreign_keys=[("batch_id", "batches", "id"), ("set_id", "sets", "id")],
        not_null={"set_id", "class_name", "round", "request"},
    )
    db["batch_requests"].create_index(["custom_id"])
    db["generations"].add_column("batch_id", str)
    db["generations"].add_column("custom_id", str)
    db["generations"].add_column("batch_line", str)
    db.execute(
        "CREATE UNIQUE INDEX IF NOT EXISTS idx_generations_batch_line ON generations (batch_id, custom_id) "
        "WHERE batch_id IS NOT NULL"
    )


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "initial schema", _initial_schema),
    Migration(2, "one ok answer per class", _one_answer_per_class),
    Migration(3, "batch bookkeeping", _batch_bookkeeping),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


def _read_version(conn: sqlite3.Connection, path: Path) -> int:
    """Schema version of an open file: 0 for a file without tables; StoreError for a foreign file."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return 0
    row = None
    if "meta" in tables:
        row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None or not str(row[0]).isdigit():
        shown = ", ".join(sorted(tables)[:5])
        raise StoreError(f"{path} is not a descgen cache (an SQLite file with other tables: {shown})")
    version = int(row[0])
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"{path} has cache schema version {version}, newer than this descgen knows "
            f"({SCHEMA_VERSION}); upgrade descgen to use it"
        )
    return version


def _store_error(exc: sqlite3.Error, path: Path) -> StoreError:
    """One clear message for an SQLite error met while using the cache file."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    text = str(exc)
    if code == sqlite3.SQLITE_CORRUPT or "malformed" in text:
        return StoreError(
            f"{path} is corrupt ({text}); nothing was written to it. Salvage what it holds with: "
            f'sqlite3 {path} ".recover" | sqlite3 recovered.db'
        )
    if code == sqlite3.SQLITE_NOTADB:
        return StoreError(f"{path} is not a usable SQLite cache: {text}")
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(f"the cache is read-only: {path}")
    if code == sqlite3.SQLITE_BUSY:
        return StoreError(
            f"the cache {path} is locked by another process (waited {BUSY_TIMEOUT_MS // 1000} s)"
        )
    if code == sqlite3.SQLITE_CANTOPEN:
        return StoreError(f"cannot open the cache {path}")
    return StoreError(f"{path}: {text}")


def _guarded(method: Callable) -> Callable:
    """Turn an SQLite error inside a Store method into a StoreError naming the file."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from None

    return wrapper


def _require_file(path: Path) -> None:
    if path.is_dir():
        raise StoreError(f"the cache {path} is a directory, not a file")
    if not path.exists():
        raise StoreError(f"cache file not found: {path}")


def _require_writable(path: Path) -> None:
    """The file (or, for a new file, its directory) and the directory must be writable."""
    parent = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        raise StoreError(f"the cache is read-only: {path}")
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        raise StoreError(f"the cache is read-only: {path} (its directory {parent} is not writable)")


@dataclass(frozen=True)
class DescriptionSet:
    id: str
    dataset: str
    prompt_fp: str
    backend: str
    model: str
    params: dict
    n: int
    created_at: float

    @property
    def label(self) -> str:
        return f"{self.id} ({self.backend}:{self.model}, prompt {self.prompt_fp[:10]}, N={self.n})"


def set_id_for(dataset: str, prompt_fp: str, backend: str, model: str, params: dict, n: int) -> str:
    """Deterministic id of a description set; part of every request key."""
    key = canonical_json(
        {
            "dataset": dataset,
            "prompt": prompt_fp,
            "backend": backend,
            "model": model,
            "params": params,
            "n": n,
        }
    )
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]


class Store:
    """A description cache file.

    ``Store(path)`` opens for writing (creating the file and schema if needed);
    ``Store(path, readonly=True)`` opens an existing cache read-only and never changes it;
    ``Store(path, create=False)`` opens an existing cache read-only and reopens it for writing
    at the first write.
    """

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False):
        self.path = Path(path).expanduser()
        self.readonly = readonly
        self.conn: sqlite3.Connection | None = None
        self._db: sqlite_utils.Database | None = None
        self.writable = False
        if readonly or not create:
            _require_file(self.path)
            if self._open_reader() == 0 and not readonly:
                self.make_writable()  # an empty file (no tables) becomes a cache
        else:
            self._open_writer()

    # ------------------------------------------------------------------ opening
    def _connect(self, target: str, uri: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(target, uri=uri, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        return conn

    def _attach(self, conn: sqlite3.Connection, writable: bool) -> None:
        self.conn = conn
        self._db = None
        self.writable = writable

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils over the open connection, for writing (reads go through :meth:`_query`)."""
        if self._db is None:  # reset whenever the connection is replaced (_attach)
            import sqlite_utils

            self._db = sqlite_utils.Database(self.conn)
        return self._db

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict]:
        """The rows of a SELECT as dicts (column name -> value)."""
        cursor = self.conn.execute(sql, params)
        keys = [d[0] for d in cursor.description]
        return [dict(zip(keys, row, strict=True)) for row in cursor]

    def _table_names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def _open_reader(self) -> int:
        """Open read-only (no WAL switch, no schema); return the schema version."""
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        conn = None
        try:
            conn = self._connect(uri, uri=True)
            version = _read_version(conn, self.path)
            if version == 0 and self.readonly:
                raise StoreError(f"{self.path} is not a descgen cache (it has no tables)")
            if 0 < version < MIN_READABLE_VERSION:
                raise StoreError(
                    f"{self.path} has cache schema version {version}, too old to read; upgrade it by "
                    "running a writing command on it (descgen encode, import or generate)"
                )
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            raise exc if isinstance(exc, StoreError) else _store_error(exc, self.path) from None
        self._attach(conn, writable=False)
        return version

    def _open_writer(self) -> None:
        """Open for writing: refuse foreign, newer, corrupt and read-only files, then migrate."""
        if self.path.is_dir():
            raise StoreError(f"the cache {self.path} is a directory, not a file")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the cache {self.path}: {exc.strerror or exc}") from None
        _require_writable(self.path)
        conn = None
        try:
            conn = self._connect(str(self.path), uri=False)
            version = _read_version(conn, self.path)  # before anything is written
            if version:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"database disk image is malformed: {result}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
        except (sqlite3.Error, StoreError) as exc:
            if conn is not None:
                conn.close()
            raise exc if isinstance(exc, StoreError) else _store_error(exc, self.path) from None
        self._attach(conn, writable=True)
        try:
            self._migrate(version)
        except BaseException:
            self.close()
            raise

    def make_writable(self) -> None:
        """Reopen a cache opened with ``create=False`` for writing (a no-op when it already is).

        Raises StoreError ("the cache is read-only") when the file or its directory cannot be
        written, and for a store opened with ``readonly=True``.
        """
        if self.writable:
            return
        if self.readonly:
            raise StoreError(f"{self.path} was opened read-only by a reading command")
        assert self.conn is not None
        self.conn.close()
        self.conn = None
        try:
            self._open_writer()
        except BaseException:
            self._open_reader()  # still usable for reading
            raise

    # ------------------------------------------------------------------ migrations
    def schema_version(self) -> int:
        return _read_version(self.conn, self.path)

    def applied_migrations(self) -> list[dict]:
        if "migrations" not in self._table_names():
            return []
        return self._query("SELECT * FROM migrations ORDER BY version")

    def _migrate(self, version: int) -> None:
        for step in MIGRATIONS:
            if step.version <= version:
                continue
            with self.transaction():  # BEGIN IMMEDIATE: another writer may have migrated meanwhile
                if self.schema_version() >= step.version:
                    continue
                step.apply(self.db)
                self.conn.execute(
                    "CREATE TABLE IF NOT EXISTS migrations "
                    "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at FLOAT NOT NULL)"
                )
                self.conn.execute(
                    "INSERT INTO migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    [step.version, step.name, _now()],
                )
                self.conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    [str(step.version)],
                )

    def transaction(self):
        """Context manager: one atomic write (BEGIN IMMEDIATE ... COMMIT / ROLLBACK).

        A store opened with ``create=False`` is reopened for writing first.
        """
        if not self.writable:
            self.make_writable()
        return _Transaction(self.conn, self.path)

    def close(self) -> None:
        if self.conn is None:
            return
        if self.writable:
            # The last writer leaves the file in rollback-journal mode: no -wal/-shm at rest.
            # While another connection is open this fails at once and the file stays in WAL.
            try:
                self.conn.execute("PRAGMA busy_timeout=0")
                self.conn.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.Error:
                pass
        self.conn.close()
        self.conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def integrity_check(self) -> str:
        return self.conn.execute("PRAGMA integrity_check").fetchone()[0]

    # ------------------------------------------------------------------ prompts
    def ensure_prompt(self, fingerprint: str, name: str, version: str, content: str) -> None:
        """Store a prompt's full canonical text the first time it is used."""
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO prompts (fingerprint, name, version, content, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (fingerprint, name, version, content, _now()),
            )

    def get_prompt(self, fingerprint: str) -> dict | None:
        rows = self._query("SELECT * FROM prompts WHERE fingerprint = ?", [fingerprint])
        return rows[0] if rows else None

    def list_prompts(self) -> list[dict]:
        return self._query("SELECT * FROM prompts ORDER BY created_at")

    # ------------------------------------------------------------------ sets
    def ensure_set(
        self,
        dataset: str,
        prompt_fp: str,
        backend: str,
        model: str,
        params: dict,
        n: int,
        source: str | None = None,
    ) -> DescriptionSet:
        sid = set_id_for(dataset, prompt_fp, backend, model, params, n)
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO sets (id, dataset, prompt_fp, backend, model, params, n, source, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sid, dataset, prompt_fp, backend, model, canonical_json(params), n, source, _now()),
            )
        s = self.get_set(sid)
        assert s is not None
        return s

    @staticmethod
    def _set_from_row(row: dict) -> DescriptionSet:
        return DescriptionSet(
            id=row["id"],
            dataset=row["dataset"],
            prompt_fp=row["prompt_fp"],
            backend=row["backend"],
            model=row["model"],
            params=json.loads(row["params"]),
            n=row["n"],
            created_at=row["created_at"],
        )

    def get_set(self, set_id: str) -> DescriptionSet | None:
        rows = self._query("SELECT * FROM sets WHERE id = ?", [set_id])
        return self._set_from_row(rows[0]) if rows else None

    def find_sets(self, set_id_prefix: str) -> list[DescriptionSet]:
        rows = self._query("SELECT * FROM sets WHERE id LIKE ? ORDER BY created_at", [set_id_prefix + "%"])
        return [self._set_from_row(r) for r in rows]

    def list_sets(
        self,
        dataset: str | None = None,
        backend: str | None = None,
        model: str | None = None,
        prompt_fp_prefix: str | None = None,
    ) -> list[DescriptionSet]:
        sql = "SELECT * FROM sets WHERE 1=1"
        args: list[Any] = []
        if dataset is not None:
            sql += " AND dataset = ?"
            args.append(dataset)
        if backend is not None:
            sql += " AND backend = ?"
            args.append(backend)
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        if prompt_fp_prefix is not None:
            sql += " AND prompt_fp LIKE ?"
            args.append(prompt_fp_prefix + "%")
        sql += " ORDER BY created_at"
        return [self._set_from_row(r) for r in self._query(sql, args)]

    # ------------------------------------------------------------------ generations
    def completed_classes(self, set_id: str) -> set[str]:
        """Classes of a set that have their validated descriptions stored."""
        rows = self._query(
            "SELECT DISTINCT class_name FROM generations WHERE set_id = ? AND status = 'ok'", [set_id]
        )
        return {r["class_name"] for r in rows}

    def _insert_generation(self, set_: DescriptionSet, class_name: str, fields: dict) -> int:
        allowed = {
            "class_id",
            "attempt",
            "seed",
            "request",
            "raw_response",
            "status",
            "error",
            "prompt_tokens",
            "completion_tokens",
            "latency_s",
            "batch_id",
            "custom_id",
            "batch_line",
        }
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown generation fields: {sorted(unknown)}")
        if fields.get("status") not in ("ok", "invalid", "error", "superseded"):
            raise ValueError(f"bad generation status {fields.get('status')!r}")
        row = {
            "set_id": set_.id,
            "dataset": set_.dataset,
            "class_name": class_name,
            "prompt_fp": set_.prompt_fp,
            "backend": set_.backend,
            "model": set_.model,
            "params": canonical_json(set_.params),
            "created_at": _now(),
            **fields,
        }
        if isinstance(row.get("request"), dict | list):
            row["request"] = canonical_json(row["request"])
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        cur = self.conn.execute(f"INSERT INTO generations ({cols}) VALUES ({marks})", list(row.values()))
        return int(cur.lastrowid)

    def record_attempt(self, set_: DescriptionSet, class_name: str, **fields: Any) -> int:
        """Store one failed request (status 'invalid' or 'error'), committed at once."""
        if fields.get("status") == "ok":
            raise ValueError("use record_success for a valid answer")
        with self.transaction():
            stored = self._batch_line_generation(fields)
            if stored is not None:
                return stored
            return self._insert_generation(set_, class_name, fields)

    def record_success(
        self,
        set_: DescriptionSet,
        class_name: str,
        spatial: Sequence[str],
        temporal: Sequence[str],
        phrases: dict[str, Sequence[str]] | None = None,
        replace: bool = False,
        **fields: Any,
    ) -> int:
        """Store a valid answer and its sentences in ONE transaction.

        With ``replace`` (``--force``), earlier descriptions of this class in this set are
        replaced; their generation rows stay as history. Without it, a class that another
        process completed meanwhile keeps its descriptions, and this answer is kept as history
        with status 'superseded' (its tokens still count in the usage report).
        """
        with self.transaction():
            stored = self._batch_line_generation(fields)
            if stored is not None:
                return stored
            if not replace and self._has_answer(set_.id, class_name):
                return self._insert_generation(set_, class_name, {**fields, "status": "superseded"})
            fields = {**fields, "status": "ok"}
            if replace:
                self.conn.execute(
                    "DELETE FROM descriptions WHERE set_id = ? AND class_name = ?", [set_.id, class_name]
                )
                self.conn.execute(
                    "UPDATE generations SET status = 'superseded' WHERE set_id = ? AND class_name = ? "
                    "AND status = 'ok'",
                    [set_.id, class_name],
                )
            gid = self._insert_generation(set_, class_name, fields)
            for kind, texts in (("spatial", spatial), ("temporal", temporal)):
                kind_phrases = (phrases or {}).get(kind) or [None] * len(texts)
                for i, (text, phrase) in enumerate(zip(texts, kind_phrases, strict=True)):
                    self.conn.execute(
                        "INSERT INTO descriptions (set_id, class_name, kind, idx, text, text_hash, phrase, "
                        "generation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        [set_.id, class_name, kind, i, text, text_hash(text), phrase, gid],
                    )
            return gid

    def _batch_line_generation(self, fields: dict) -> int | None:
        """The generation already stored for this batch output line, if any (collecting is idempotent)."""
        if fields.get("batch_id") is None:
            return None
        row = self.conn.execute(
            "SELECT id FROM generations WHERE batch_id = ? AND custom_id = ?",
            [fields["batch_id"], fields.get("custom_id")],
        ).fetchone()
        return None if row is None else int(row[0])

    def _has_answer(self, set_id: str, class_name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM generations WHERE set_id = ? AND class_name = ? AND status = 'ok' LIMIT 1",
            [set_id, class_name],
        ).fetchone()
        return row is not None

    def generations(
        self, set_id: str | None = None, class_name: str | None = None, status: str | None = None
    ) -> list[dict]:
        sql = "SELECT * FROM generations WHERE 1=1"
        args: list[Any] = []
        if set_id is not None:
            sql += " AND set_id = ?"
            args.append(set_id)
        if class_name is not None:
            sql += " AND class_name = ?"
            args.append(class_name)
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY id"
        return self._query(sql, args)

    def count_rows(self, table: str) -> int:
        if table not in ("prompts", "sets", "generations", "descriptions", "encoders", "embeddings"):
            raise ValueError(table)
        return self.conn.execute(f"SELECT COUNT(*) FROM [{table}]").fetchone()[0]

    # ------------------------------------------------------------------ descriptions
    def descriptions(
        self, set_id: str, class_names: Iterable[str] | None = None
    ) -> dict[str, dict[str, list]]:
        """{class name: {"spatial": [text...], "temporal": [text...]}} in index order."""
        out: dict[str, dict[str, list]] = {}
        rows = self._query(
            "SELECT class_name, kind, idx, text FROM descriptions WHERE set_id = ? "
            "ORDER BY class_name, kind, idx",
            [set_id],
        )
        wanted = set(class_names) if class_names is not None else None
        for r in rows:
            if wanted is not None and r["class_name"] not in wanted:
                continue
            out.setdefault(r["class_name"], {"spatial": [], "temporal": []})[r["kind"]].append(r["text"])
        return out

    def description_rows(self, set_id: str, class_name: str | None = None) -> list[dict]:
        sql = "SELECT * FROM descriptions WHERE set_id = ?"
        args: list[Any] = [set_id]
        if class_name is not None:
            sql += " AND class_name = ?"
            args.append(class_name)
        sql += " ORDER BY class_name, kind, idx"
        return self._query(sql, args)

    def all_description_texts(self, set_ids: Iterable[str] | None = None) -> list[tuple[str, str]]:
        """Distinct (text_hash, text) of descriptions, optionally limited to some sets."""
        if set_ids is None:
            rows = self._query("SELECT DISTINCT text_hash, text FROM descriptions ORDER BY text_hash")
        else:
            ids = list(set_ids)
            marks = ", ".join("?" for _ in ids) or "NULL"
            rows = self._query(
                f"SELECT DISTINCT text_hash, text FROM descriptions WHERE set_id IN ({marks}) ORDER BY text_hash",
                ids,
            )
        return [(r["text_hash"], r["text"]) for r in rows]

    # ------------------------------------------------------------------ encoders and embeddings
    def ensure_encoder(
        self,
        fingerprint: str,
        model_name: str,
        pretrained: str,
        weights_hash: str,
        context_length: int,
        dim: int,
        random_weights: bool,
    ) -> None:
        """Record an encoder the first time it is used (an encoder already there writes nothing)."""
        if self.get_encoder(fingerprint) is not None:
            return
        with self.transaction():
            self.conn.execute(
                "INSERT OR IGNORE INTO encoders (fingerprint, model_name, pretrained, weights_hash, "
                "context_length, dim, random_weights, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    fingerprint,
                    model_name,
                    pretrained,
                    weights_hash,
                    context_length,
                    dim,
                    int(random_weights),
                    _now(),
                ],
            )

    def get_encoder(self, fingerprint: str) -> dict | None:
        rows = self._query("SELECT * FROM encoders WHERE fingerprint = ?", [fingerprint])
        return rows[0] if rows else None

    def list_encoders(self) -> list[dict]:
        return self._query("SELECT * FROM encoders ORDER BY created_at")

    def texts_missing_embeddings(
        self, encoder_fp: str, set_ids: Iterable[str] | None = None
    ) -> list[tuple[str, str]]:
        """(text_hash, text) of descriptions that have no embedding for this encoder yet."""
        sql = (
            "SELECT DISTINCT d.text_hash, d.text FROM descriptions d "
            "LEFT JOIN embeddings e ON e.text_hash = d.text_hash AND e.encoder_fp = ? "
            "WHERE e.text_hash IS NULL"
        )
        args: list[Any] = [encoder_fp]
        if set_ids is not None:
            ids = list(set_ids)
            sql += f" AND d.set_id IN ({', '.join('?' for _ in ids) or 'NULL'})"
            args += ids
        sql += " ORDER BY d.text_hash"
        return [(r["text_hash"], r["text"]) for r in self._query(sql, args)]

    def put_embeddings(self, encoder_fp: str, rows: Iterable[dict]) -> int:
        """Insert embeddings (dicts with text_hash, vector bytes, dim, n_tokens, truncated) atomically."""
        rows = list(rows)
        if not rows:
            return 0
        now = _now()
        n = 0
        with self.transaction():
            for r in rows:
                self.conn.execute(
                    "INSERT OR REPLACE INTO embeddings (text_hash, encoder_fp, dim, dtype, vector, n_tokens, "
                    "truncated, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        r["text_hash"],
                        encoder_fp,
                        r["dim"],
                        r.get("dtype", "float32"),
                        r["vector"],
                        r.get("n_tokens"),
                        int(bool(r.get("truncated", False))),
                        now,
                    ],
                )
                n += 1
        return n

    def get_embeddings(self, encoder_fp: str, text_hashes: Iterable[str]) -> dict[str, dict]:
        """{text_hash: row} for the hashes that have an embedding for this encoder."""
        hashes = list(dict.fromkeys(text_hashes))
        out: dict[str, dict] = {}
        for start in range(0, len(hashes), 500):
            chunk = hashes[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for r in self._query(
                f"SELECT * FROM embeddings WHERE encoder_fp = ? AND text_hash IN ({marks})",
                [encoder_fp, *chunk],
            ):
                out[r["text_hash"]] = r
        return out

    def embedding_rows_for_text(self, text_hash_: str) -> list[dict]:
        return list(
            self._query(
                "SELECT e.*, c.model_name, c.pretrained, c.random_weights FROM embeddings e "
                "JOIN encoders c ON c.fingerprint = e.encoder_fp WHERE e.text_hash = ?",
                [text_hash_],
            )
        )

    # ------------------------------------------------------------------ batches
    def add_batch(self, batch: dict, requests: Iterable[dict]) -> None:
        """Record a submitted batch (or written batch file) and its requests in one transaction."""
        now = _now()
        row = {"created_at": now, "updated_at": now, **batch}
        with self.transaction():
            self.db["batches"].insert(row, replace=True)
            self.db["batch_requests"].insert_all(
                ({"batch_id": row["id"], **r} for r in requests), replace=True
            )

    def update_batch(self, batch_id: str, **fields: Any) -> None:
        allowed = {"status", "output_file_id", "error_file_id", "completed", "failed", "collected_at", "path"}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"unknown batch fields: {sorted(unknown)}")
        with self.transaction():
            self.db["batches"].update(batch_id, {**fields, "updated_at": _now()})

    def _has_batches(self) -> bool:
        return "batches" in self._table_names()

    def get_batch(self, batch_id: str) -> dict | None:
        if not self._has_batches():
            return None
        rows = self._query("SELECT * FROM batches WHERE id = ?", [batch_id])
        return rows[0] if rows else None

    def list_batches(self, uncollected: bool = False) -> list[dict]:
        if not self._has_batches():
            return []
        sql = "SELECT * FROM batches"
        if uncollected:
            sql += " WHERE collected_at IS NULL"
        return self._query(sql + " ORDER BY created_at, id")

    def batch_requests(self, batch_id: str) -> dict[str, dict]:
        """{custom_id: request row} of a batch."""
        rows = self._query("SELECT * FROM batch_requests WHERE batch_id = ?", [batch_id])
        return {r["custom_id"]: r for r in rows}

    def batches_of_request(self, custom_id: str) -> list[str]:
        """The batches (newest first) that hold a request with this custom id."""
        if not self._has_batches():
            return []
        rows = self._query(
            "SELECT r.batch_id FROM batch_requests r JOIN batches b ON b.id = r.batch_id "
            "WHERE r.custom_id = ? ORDER BY b.created_at DESC",
            [custom_id],
        )
        return [r["batch_id"] for r in rows]

    def stored_batch_lines(self, batch_id: str) -> dict[str, str]:
        """{custom id: status} of the lines of a batch stored already."""
        rows = self._query("SELECT custom_id, status FROM generations WHERE batch_id = ?", [batch_id])
        return {r["custom_id"]: r["status"] for r in rows}

    def invalid_counts(self, set_id: str) -> dict[str, int]:
        """{class name: invalid answers stored} of a set."""
        rows = self._query(
            "SELECT class_name, COUNT(*) AS n FROM generations WHERE set_id = ? AND status = 'invalid' "
            "GROUP BY class_name",
            [set_id],
        )
        return {r["class_name"]: r["n"] for r in rows}

    # ------------------------------------------------------------------ usage
    def usage(self) -> list[dict]:
        """Requests, tokens and failures per backend and model."""
        return list(
            self._query(
                "SELECT backend, model, COUNT(*) AS requests, "
                "SUM(CASE WHEN status = 'ok' OR status = 'superseded' THEN 1 ELSE 0 END) AS ok, "
                "SUM(CASE WHEN status = 'invalid' THEN 1 ELSE 0 END) AS invalid, "
                "SUM(CASE WHEN status = 'error' THEN 1 ELSE 0 END) AS errors, "
                "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
                "COALESCE(SUM(completion_tokens), 0) AS completion_tokens, "
                "COALESCE(SUM(latency_s), 0) AS latency_s "
                "FROM generations GROUP BY backend, model ORDER BY backend, model"
            )
        )

    def batch_usage(self) -> list[dict]:
        """Tokens of the answers that came through a batch, per backend and model (batch prices apply)."""
        if "batch_id" not in {r[1] for r in self.conn.execute("PRAGMA table_info(generations)")}:
            return []
        return list(
            self._query(
                "SELECT backend, model, COUNT(*) AS requests, "
                "COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens, "
                "COALESCE(SUM(completion_tokens), 0) AS completion_tokens "
                "FROM generations WHERE batch_id IS NOT NULL GROUP BY backend, model ORDER BY backend, model"
            )
        )

    def failures_by_reason(self) -> list[dict]:
        return list(
            self._query(
                "SELECT backend, model, status, error, COUNT(*) AS count FROM generations "
                "WHERE status IN ('invalid', 'error') GROUP BY backend, model, status, error "
                "ORDER BY count DESC"
            )
        )

    # ------------------------------------------------------------------ encode, audit and export queries
    def encoders_for_set(self, set_id: str) -> list[dict]:
        """Encoders that have embeddings for descriptions of a set, with how many texts each covers."""
        return list(
            self._query(
                "SELECT c.*, COUNT(DISTINCT e.text_hash) AS texts FROM descriptions d "
                "JOIN embeddings e ON e.text_hash = d.text_hash "
                "JOIN encoders c ON c.fingerprint = e.encoder_fp "
                "WHERE d.set_id = ? GROUP BY c.fingerprint ORDER BY texts DESC, c.created_at",
                [set_id],
            )
        )


for _name, _member in list(vars(Store).items()):
    if isinstance(_member, types.FunctionType) and not _name.startswith("__") and _name != "close":
        setattr(Store, _name, _guarded(_member))


class _Transaction:
    def __init__(self, conn: sqlite3.Connection, path: Path):
        self.conn = conn
        self.path = path
        self.outer = False

    def __enter__(self):
        if self.conn.in_transaction:
            self.outer = True  # nested: the outer transaction commits
            return self
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise _store_error(exc, self.path) from None
        return self

    def __exit__(self, exc_type, exc, tb):
        if self.outer:
            return False
        try:
            self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        except sqlite3.Error as err:
            if exc_type is None:
                raise _store_error(err, self.path) from None
        return False
