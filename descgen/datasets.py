"""Class lists: built-in dataset names resolved in a data directory, or any list file.

Supported files:

* ``id,name`` CSV with a header row (extra columns are allowed and ignored);
* one class name per line;
* UCF101's ``classInd.txt`` (``1 ApplyEyeMakeup``);
* SSv2's ``labels.json`` (an object mapping name to id, ids as strings or integers), or a JSON
  list of names.

Class ids, where the file has them, must be unique and contiguous (starting at 0 or 1); the list is
returned in id order. Every problem raises :class:`ClassListError` with one message that names the
file, the line and the offending value.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from descgen.errors import DescgenError

DATA_DIR_ENV = "MSTA_DATA_DIR"
DEFAULT_DATA_DIR = "data"

BUILTIN: dict[str, str] = {
    "k400": "Kinetics-400, 400 human actions in YouTube clips (sports, daily life, music, "
    "interactions with people and objects)",
    "k600": "Kinetics-600, 600 human actions in YouTube clips, a superset of Kinetics-400 "
    "with more everyday, sports and craft activities",
    "hmdb51": "HMDB51, 51 basic human actions and body movements from movies and web videos "
    "(facial actions, body movements, interactions with objects and with other people)",
    "ucf101": "UCF101, 101 human actions from YouTube videos (sports, playing instruments, "
    "body-motion exercises, human-object interactions)",
    "ssv2": "Something-Something v2, 174 fine-grained hand-object manipulations filmed by crowd "
    "workers; class names are templates where 'something' stands for any object",
}

GENERIC_DESCRIPTION = "a video action-recognition dataset of human actions"

MAX_CLASS_NAME_CHARS = 200  # longer "names" are data errors (a whole file on one line, ...)
_MAX_LINE_CHARS = 64 * 1024  # below the csv module's field limit, far above any real line


class ClassListError(DescgenError):
    """A class list cannot be used. The message is meant for the user, as is."""


@dataclass
class ClassList:
    name: str  # dataset name used in the cache
    names: list[str]  # class names in label order (index = class id)
    description: str  # one line, used in prompts
    source: str  # file the list was read from

    def __len__(self) -> int:
        return len(self.names)

    def index(self, class_name: str) -> int:
        return self.names.index(class_name)


def resolve_data_dir(data_dir: str | Path | None = None) -> Path:
    """The data directory: the argument, else ``$MSTA_DATA_DIR``, else ``./data``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    return Path(DEFAULT_DATA_DIR)


def builtin_path(name: str, data_dir: str | Path | None = None) -> Path:
    return resolve_data_dir(data_dir) / "labels" / f"{name}.csv"


def builtin_status(data_dir: str | Path | None = None) -> list[dict]:
    """One row per built-in dataset: name, description, path, whether the file exists."""
    rows = []
    for name, desc in BUILTIN.items():
        path = builtin_path(name, data_dir)
        rows.append({"name": name, "description": desc, "path": path, "found": path.is_file()})
    return rows


def load_class_list(
    dataset: str | None = None,
    classes_file: str | Path | None = None,
    data_dir: str | Path | None = None,
) -> ClassList:
    """Load a class list.

    * ``dataset`` alone: a built-in name, read from ``{data_dir}/labels/{dataset}.csv``.
    * ``classes_file``: any supported list file; ``dataset`` (if given) names the list, otherwise
      the file's stem does.
    """
    if classes_file is None or str(classes_file) == "":
        if not dataset:
            raise ClassListError("no class list given: use --dataset NAME or --classes FILE")
        if dataset not in BUILTIN:
            raise ClassListError(
                f"unknown dataset {dataset!r}: built-in datasets are {', '.join(BUILTIN)}; "
                "use --classes FILE for any other list"
            )
        path = builtin_path(dataset, data_dir)
        if not path.is_file():
            raise ClassListError(
                f"class list of {dataset!r} not found at {path} (set --data-dir or ${DATA_DIR_ENV} "
                "to a directory laid out as labels/{name}.csv)"
            )
        names = _read_list(path)
        return ClassList(name=dataset, names=names, description=BUILTIN[dataset], source=str(path))

    path = Path(classes_file).expanduser()
    name = dataset or path.stem
    if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]*", name):
        raise ClassListError(
            f"dataset name {name!r} is not usable (letters, digits, '_', '-', '.'); give one with --dataset"
        )
    names = _read_list(path)
    description = BUILTIN.get(name, GENERIC_DESCRIPTION)
    return ClassList(name=name, names=names, description=description, source=str(path))


# ---------------------------------------------------------------------- parsing


def _read_text(path: Path) -> str:
    if not path.exists():
        raise ClassListError(f"class list file not found: {path}")
    if path.is_dir():
        raise ClassListError(f"class list {path} is a directory, not a file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ClassListError(f"cannot read class list {path}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ClassListError(f"class list {path} is not UTF-8 text (byte {exc.start})") from None


def _read_list(path: Path) -> list[str]:
    text = _read_text(path)
    if not text.strip():
        raise ClassListError(f"class list {path} is empty")
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("{", "[")):
        entries = _parse_json(path, text)
    else:
        entries = _parse_text(path, text)
    return _check(path, entries)


# An entry: (where, id or None, name)
_Entry = tuple[str, int | None, str]


def _parse_json(path: Path, text: str) -> list[_Entry]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClassListError(f"class list {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
    entries: list[_Entry] = []
    if isinstance(obj, dict):
        for name, raw_id in obj.items():
            where = f"entry {name!r}"
            if isinstance(raw_id, bool) or not isinstance(raw_id, int | str):
                raise ClassListError(f"class list {path}: {where} has id {raw_id!r}, expected an integer")
            try:
                cid = int(str(raw_id).strip())
            except ValueError:
                raise ClassListError(
                    f"class list {path}: {where} has id {raw_id!r}, expected an integer"
                ) from None
            entries.append((where, cid, str(name)))
    elif isinstance(obj, list):
        for i, name in enumerate(obj):
            if not isinstance(name, str):
                raise ClassListError(f"class list {path}: item {i} is {name!r}, expected a class name")
            entries.append((f"item {i}", None, name))
    else:
        raise ClassListError(f"class list {path}: expected a JSON object (name -> id) or a list of names")
    return entries


_CLASSIND = re.compile(r"^\s*(\d+)\s+(.*\S)\s*$")
_ID_COMMA = re.compile(r"^\s*\d+\s*,")


def _lines(text: str) -> list[tuple[int, str]]:
    """(1-based line number, line) without trailing blank lines; inner blank lines are kept."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    return [(i + 1, line) for i, line in enumerate(lines)]


def _parse_text(path: Path, text: str) -> list[_Entry]:
    lines = _lines(text)
    for n, line in lines:
        if len(line) > _MAX_LINE_CHARS:
            raise ClassListError(
                f"class list {path}, line {n}: the line is {len(line)} characters long "
                f"(class names are limited to {MAX_CLASS_NAME_CHARS} characters)"
            )
    first = lines[0][1] if lines else ""
    header = [c.strip().lower() for c in next(csv.reader([first]), [])]
    if "name" in header and "id" in header:
        return _parse_csv(path, text, header)
    body = [(n, line) for n, line in lines if line.strip()]
    if body and all(_CLASSIND.match(line) and "," not in line.split(None, 1)[0] for _, line in body):
        entries: list[_Entry] = []
        for n, line in lines:
            if not line.strip():
                raise ClassListError(f"class list {path}, line {n}: empty line")
            m = _CLASSIND.match(line)
            assert m is not None
            entries.append((f"line {n}", int(m.group(1)), m.group(2)))
        return entries
    if body and all(_ID_COMMA.match(line) for _, line in body):
        # id,name without a header row
        return _parse_csv(path, text, None)
    if "," in first and len(header) == 2 and header[0] in ("id", "index", "label", "class_id"):
        raise ClassListError(
            f"class list {path}: CSV header must name the columns 'id' and 'name', got {first!r}"
        )
    entries = []
    for n, line in lines:
        if not line.strip():
            raise ClassListError(f"class list {path}, line {n}: empty class name")
        entries.append((f"line {n}", None, line.strip()))
    return entries


def _parse_csv(path: Path, text: str, header: list[str] | None) -> list[_Entry]:
    reader = csv.reader(io.StringIO(text))
    try:
        rows = list(reader)
    except csv.Error as exc:
        raise ClassListError(f"class list {path}, line {reader.line_num}: not valid CSV ({exc})") from None
    while rows and not any(c.strip() for c in rows[-1]):
        rows.pop()
    start = 1 if header is not None else 0
    id_col = header.index("id") if header is not None else 0
    name_col = header.index("name") if header is not None else 1
    width = max(id_col, name_col) + 1
    entries: list[_Entry] = []
    for i, row in enumerate(rows[start:], start=start + 1):
        where = f"line {i}"
        if not any(c.strip() for c in row):
            raise ClassListError(f"class list {path}, {where}: empty line")
        if len(row) < width:
            raise ClassListError(
                f"class list {path}, {where}: expected columns id,name, got {','.join(row)!r}"
            )
        if header is None and len(row) > 2:
            # A name with an unquoted comma: keep the rest of the line as the name.
            row = [row[0], ",".join(row[1:])]
        raw_id = row[id_col].strip()
        try:
            cid = int(raw_id)
        except ValueError:
            raise ClassListError(f"class list {path}, {where}: id {raw_id!r} is not an integer") from None
        entries.append((where, cid, row[name_col]))
    if not entries:
        raise ClassListError(f"class list {path} has a header but no classes")
    return entries


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def _check(path: Path, entries: list[_Entry]) -> list[str]:
    if not entries:
        raise ClassListError(f"class list {path} has no classes")
    seen: dict[str, str] = {}
    for where, _, name in entries:
        if not name.strip():
            raise ClassListError(f"class list {path}, {where}: empty class name")
        if len(name.strip()) > MAX_CLASS_NAME_CHARS:
            raise ClassListError(
                f"class list {path}, {where}: class name is {len(name.strip())} characters long "
                f"(the limit is {MAX_CLASS_NAME_CHARS}): {name.strip()[:40]!r}..."
            )
        key = _norm(name)
        if key in seen:
            raise ClassListError(
                f"class list {path}, {where}: duplicate class name {name.strip()!r} (first at {seen[key]})"
            )
        seen[key] = where
    with_ids = [e for e in entries if e[1] is not None]
    if with_ids and len(with_ids) != len(entries):
        raise ClassListError(f"class list {path}: some entries have ids and some do not")
    if not with_ids:
        return [name.strip() for _, _, name in entries]
    by_id: dict[int, str] = {}
    for where, cid, _ in entries:
        assert cid is not None
        if cid in by_id:
            raise ClassListError(f"class list {path}, {where}: duplicate id {cid} (first at {by_id[cid]})")
        by_id[cid] = where
    ids = sorted(by_id)
    base = ids[0]
    if base not in (0, 1):
        raise ClassListError(f"class list {path}: ids must start at 0 or 1, the smallest is {base}")
    for expected, cid in enumerate(ids, start=base):
        if cid != expected:
            raise ClassListError(
                f"class list {path}: ids are not contiguous, id {expected} is missing "
                f"(next id is {cid}, at {by_id[cid]})"
            )
    ordered = sorted(entries, key=lambda e: e[1])  # type: ignore[arg-type, return-value]
    return [name.strip() for _, _, name in ordered]
