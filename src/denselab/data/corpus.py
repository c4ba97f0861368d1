"""Text sources, each giving a train and a validation `datasets.Dataset` of documents (column "text").

Every source has the interface the token cache (`prepare.py`) uses: `name`, `cache_key()` (the
prepared directory's name), `fingerprint()` (see below), `check_available(directory)` (raise a
ConfigError when the documents cannot be read here) and `batches()` (the documents of both splits).
A source may also have `check_documents()`: raise a ConfigError for content that cannot be
tokenized, called before a preparation starts (so a bad file costs no work and deletes nothing).

* `PythonStdlib` — the default corpus: the source files of the Python standard library that ships
  with the running interpreter. Real text (code, docstrings, comments) written by the CPython
  developers, no download, identical on every machine with the same Python build.
* `TextFiles` — bring your own .txt / .jsonl / .parquet files, loaded with `datasets`.
* `hub.HubDataset` — OpenWebText2, PG-19, WikiText-103 (or local files in their layout).

A source also gives a `fingerprint()`: a checksum of its content and the settings that shape it,
which the token cache (`prepare.py`) compares before reusing a tokenization.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import platform
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets
import pyarrow.parquet as pq

from denselab.config import ConfigError
from denselab.io import hash_file

# Path components never taken from the standard library: third-party packages and test suites
# (the test suites are large, repetitive and full of deliberately odd text).
STDLIB_EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
MIN_STDLIB_BYTES = 5_000_000


class CorpusError(ConfigError):
    """A data source that cannot be used as configured. A ConfigError, so run.py and
    `python -m denselab.data` print it as one line (exit status 2) rather than a traceback."""


ROWS_PER_READ = 256


def split_batches(splits: dict[str, datasets.Dataset], announce_total: Callable[[int], None] | None = None
                  ) -> Iterator[tuple[str, list[str]]]:
    """(split, documents) batches of the "val" then the "train" Dataset (column "text"), in order."""
    if announce_total:
        announce_total(sum(len(splits[s]) for s in ("val", "train")))
    for split in ("val", "train"):
        for batch in splits[split].select_columns(["text"]).iter(batch_size=ROWS_PER_READ):
            yield split, batch["text"]


class PythonStdlib:
    """The `*.py` files of the running interpreter's standard library.

    Files: every `*.py` under `sysconfig.get_paths()["stdlib"]` whose relative path has no component
    in STDLIB_EXCLUDED_PARTS, sorted by relative path; one document per file, decoded as UTF-8.
    Split rule: a file is validation when `crc32(relative path) % 100 < val_percent`, else train.
    """

    name = "stdlib"

    def __init__(self, val_percent: int = 5, root: str | None = None):
        if not 0 < val_percent < 100:
            raise CorpusError(f"data.source.val_percent={val_percent}: allowed 1..99")
        self.val_percent = val_percent
        self.root = Path(root or sysconfig.get_paths()["stdlib"])

    def files(self) -> list[str]:
        # os.walk with the excluded folders pruned: a virtual environment's site-packages can hold ten
        # times the stdlib's files, and walking it cost most of a short sweep job's start-up.
        found = []
        for folder, subfolders, names in os.walk(self.root):
            subfolders[:] = [d for d in subfolders if d not in STDLIB_EXCLUDED_PARTS]
            rel = Path(folder).relative_to(self.root)
            found += [(rel / n).as_posix() for n in names if n.endswith(".py")]
        return sorted(found)

    def is_validation(self, relpath: str) -> bool:
        return zlib.crc32(relpath.encode()) % 100 < self.val_percent

    def cache_key(self) -> str:
        return f"stdlib-py{platform.python_version()}"

    def fingerprint(self) -> dict:
        files = self.files()
        h = hashlib.sha256()
        for rel in files:
            h.update(rel.encode() + b"\0")
            hash_file(self.root / rel, h)
        return {
            "source": self.name,
            "python_version": platform.python_version(),
            "python_implementation": platform.python_implementation(),
            "stdlib_root": str(self.root),
            "n_files": len(files),
            "file_list_sha256": hashlib.sha256("\n".join(files).encode()).hexdigest(),
            "source_sha256": h.hexdigest(),
            "split_rule": f"crc32(relative path) % 100 < {self.val_percent} -> val",
        }

    def check_available(self, directory: Path) -> None:
        if not self.root.is_dir():
            raise ConfigError(f"data=stdlib: the standard library folder {self.root} does not exist")

    def batches(self, num_proc: int = 1, announce_total: Callable[[int], None] | None = None
                ) -> Iterator[tuple[str, list[str]]]:
        return split_batches(self.load(), announce_total)

    def load(self) -> dict[str, datasets.Dataset]:
        splits: dict[str, dict[str, list[str]]] = {"train": {"path": [], "text": []}, "val": {"path": [], "text": []}}
        total = 0
        for rel in self.files():
            text = (self.root / rel).read_bytes().decode("utf-8", errors="replace")
            split = splits["val" if self.is_validation(rel) else "train"]
            split["path"].append(rel)
            split["text"].append(text)
            total += len(text)
        if total < MIN_STDLIB_BYTES:
            raise CorpusError(
                f"the standard library at {self.root} holds only {total:,} characters of Python source "
                f"(need {MIN_STDLIB_BYTES:,}); use data=text data.paths=[...] instead"
            )
        return {name: datasets.Dataset.from_dict(cols) for name, cols in splits.items()}


class TextFiles:
    """Your own documents: .txt (one document per file), .jsonl/.json (one per line, field
    `text_field`) and .parquet (one per row, column `text_field`), loaded with `datasets`' packaged
    builders (no hub access).

    `paths` and `val_paths` take files, folders (their supported files at any depth, hidden ones
    left out) and glob patterns (`corpus/*.txt`, `corpus/**/*.jsonl`), expanded once, in sorted
    order, into `self.paths` / `self.val_paths`: the cache key and fingerprint depend on those files
    only, exactly as when they are listed one by one.

    Split: the files in `val_paths` when given; otherwise a document is validation when
    `crc32(its index as a decimal string) % 10_000 < val_fraction · 10_000`.
    """

    name = "text"
    BUILDERS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}

    def __init__(
        self,
        paths: list[str],
        val_paths: list[str] | None = None,
        val_fraction: float = 0.05,
        text_field: str = "text",
        cache_dir: str | None = None,
    ):
        if not paths:
            raise CorpusError("data.paths=[]: give at least one .txt, .jsonl or .parquet file")
        # Folders and patterns are expanded here, once: the cache key and fingerprint below see only
        # the resulting files, so a pattern and the same files listed one by one share a cache.
        self.paths = expand_paths("data.paths", paths, self.BUILDERS)
        self.val_paths = expand_paths("data.val_paths", val_paths or [], self.BUILDERS)
        self.val_fraction = float(val_fraction)
        self.text_field = text_field
        self.cache_dir = cache_dir
        if not self.val_paths and not 0 < self.val_fraction < 1:
            raise CorpusError(f"data.val_fraction={val_fraction}: allowed 0 < val_fraction < 1 (or give data.val_paths)")

    def cache_key(self) -> str:
        return "text-" + hashlib.sha1("\n".join(self.paths + ["--val--"] + self.val_paths).encode()).hexdigest()[:10]

    def fingerprint(self) -> dict:
        h = hashlib.sha256()
        for p in self.paths + ["--val--"] + self.val_paths:
            h.update(p.encode() + b"\0")
            if p != "--val--":
                hash_file(p, h)
        return {
            "source": self.name,
            "paths": self.paths,
            "val_paths": self.val_paths,
            "text_field": self.text_field,
            "source_sha256": h.hexdigest(),
            "split_rule": "data.val_paths" if self.val_paths
            else f"crc32(document index) % 10000 < {round(self.val_fraction * 10_000)} -> val",
        }

    def _load_files(self, paths: list[str]) -> datasets.Dataset:
        parts = []
        for p in paths:  # one builder call per file keeps the documents in the order given
            builder = self.BUILDERS[Path(p).suffix]
            kwargs = {"sample_by": "document"} if builder == "text" else {}
            ds = datasets.load_dataset(builder, data_files=[p], split="train", cache_dir=self.cache_dir, **kwargs)
            if self.text_field not in ds.column_names:
                raise CorpusError(f"data.text_field={self.text_field!r}: {p} has columns {ds.column_names}")
            parts.append(ds.select_columns([self.text_field]).rename_column(self.text_field, "text")
                         if self.text_field != "text" else ds.select_columns(["text"]))
        return datasets.concatenate_datasets(parts)

    def check_available(self, directory: Path) -> None:
        for p in self.paths + self.val_paths:
            if not Path(p).is_file():
                raise ConfigError(f"data.paths: {p} does not exist")

    def check_documents(self) -> None:
        """Raise a CorpusError naming the key, the file and what is allowed for the first file that
        `datasets` would fail on deep inside a preparation (or, for an empty or binary file, take in
        silently). Reads every file once: cheap next to tokenizing it."""
        for key, group in (("data.paths", self.paths), ("data.val_paths", self.val_paths)):
            for p in group:
                problem = {".txt": txt_problem, ".parquet": parquet_problem}.get(Path(p).suffix, json_problem)(
                    Path(p), self.text_field)
                if problem:
                    raise CorpusError(f"{key}: {p} {problem}")

    def batches(self, num_proc: int = 1, announce_total: Callable[[int], None] | None = None
                ) -> Iterator[tuple[str, list[str]]]:
        return split_batches(self.load(), announce_total)

    def load(self) -> dict[str, datasets.Dataset]:
        train = self._load_files(self.paths)
        if self.val_paths:
            return {"train": train, "val": self._load_files(self.val_paths)}
        threshold = round(self.val_fraction * 10_000)
        is_val = [zlib.crc32(str(i).encode()) % 10_000 < threshold for i in range(len(train))]
        val_idx = [i for i, v in enumerate(is_val) if v]
        train_idx = [i for i, v in enumerate(is_val) if not v]
        if not val_idx or not train_idx:
            raise CorpusError(
                f"data.val_fraction={self.val_fraction} splits {len(train)} document(s) into "
                f"{len(train_idx)} train / {len(val_idx)} validation: give data.val_paths=[...] "
                "or more documents"
            )
        return {"train": train.select(train_idx), "val": train.select(val_idx)}


# ----------------------------------------------------------------------------------------------
# data.paths: files, folders and glob patterns
# ----------------------------------------------------------------------------------------------

def _is_pattern(value: str) -> bool:
    """A glob pattern, unless a file of that very name exists (names may contain '[')."""
    return any(c in value for c in "*?[") and not Path(value).exists()


def _supported_below(folder: Path, suffixes) -> list[Path]:
    """The files with a supported extension below `folder`, at any depth, sorted by path; hidden
    files and folders (.git, editor backups, .ipynb_checkpoints) are not documents."""
    found = (p for p in folder.rglob("*") if p.suffix in suffixes and p.is_file())
    return sorted((p for p in found if not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.as_posix())


def expand_paths(key: str, values, suffixes) -> list[str]:
    """The absolute paths of the files that `values` (files, folders, glob patterns) name, in the
    order given, each folder's and pattern's files sorted: the same list on every run and machine
    with the same files. Raises CorpusError for a value naming no usable file."""
    allowed = ", ".join(suffixes)
    files: list[Path] = []
    for value in map(str, values):
        expanded = os.path.expanduser(value)
        if _is_pattern(expanded):
            matches = sorted(glob.glob(expanded, recursive=True))
            found = [q for m in map(Path, matches)
                     for q in (_supported_below(m, suffixes) if m.is_dir() else [m] if m.suffix in suffixes else [])]
            if not found:
                raise CorpusError(f"{key}: the pattern {value!r} matches no {allowed} file; allowed: existing "
                                  "files, folders or glob patterns of such files")
        elif Path(expanded).is_dir():
            found = _supported_below(Path(expanded), suffixes)
            if not found:
                raise CorpusError(f"{key}: the folder {value} holds no {allowed} file; allowed: existing "
                                  "files, folders or glob patterns of such files")
        else:
            path = Path(expanded)
            if path.suffix not in suffixes:
                raise CorpusError(f"{key}: {path.resolve()} has extension {path.suffix!r}; allowed: {allowed}")
            if not path.is_file():
                raise CorpusError(f"{key}: {path.resolve()} does not exist")
            found = [path]
        files.extend(found)
    return [str(p.resolve()) for p in files]


# ----------------------------------------------------------------------------------------------
# Content checks: what `datasets` would choke on, found before a preparation starts
# ----------------------------------------------------------------------------------------------

READ_CHUNK = 1 << 22
TXT_ALLOWED = "allowed: .txt files holding UTF-8 text"
JSON_ALLOWED = "allowed: one JSON object per line"


def txt_problem(path: Path, text_field: str) -> str | None:
    """Why a .txt file is no document (empty, binary, not UTF-8), or None. Read in chunks, so a
    large file costs no more memory than one chunk."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, has_text = 0, False
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            nul = chunk.find(b"\0")  # the test git and grep use: text never holds a NUL byte
            if nul >= 0:
                return f"is binary (a NUL byte at offset {offset + nul}); {TXT_ALLOWED}"
            held = decoder.getstate()[0]  # the start of a character cut by the previous chunk
            try:
                has_text = bool(decoder.decode(chunk).strip()) or has_text
            except UnicodeDecodeError as e:  # e.start counts from the held bytes, then the chunk
                at = offset - len(held) + e.start
                return (f"is not UTF-8 (byte {(held + chunk)[e.start]:#04x} at offset {at}); {TXT_ALLOWED} "
                        "(convert it first, e.g. iconv -f latin1 -t utf-8)")
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return f"is not UTF-8 (it ends inside a character); {TXT_ALLOWED}"
    return None if has_text else f"is empty; {TXT_ALLOWED}"


def _record_problem(record, where: str, text_field: str) -> str | None:
    if not isinstance(record, dict):
        return f"{where} is a JSON {type(record).__name__}, not an object; {JSON_ALLOWED}"
    if text_field not in record:
        return (f"{where} has no field {text_field!r} (keys found: {', '.join(map(str, record)) or 'none'}); "
                f"allowed: records with the field data.text_field={text_field!r}, or data.text_field set to "
                "one of their keys")
    if not isinstance(record[text_field], str):
        return (f"{where} has a {type(record[text_field]).__name__} in field {text_field!r}; "
                "allowed: a string in every record")
    return None


def json_problem(path: Path, text_field: str) -> str | None:
    """Why a .jsonl/.json file is not a list of records with a string `text_field`, or None. The
    layouts `datasets`' json builder reads: JSON Lines (blank lines skipped), or a file that starts
    with '[' holding one array of objects (or of strings, which become field "text")."""
    with open(path, "rb") as f:
        head = f.read(3)
    if head.lstrip(codecs.BOM_UTF8).startswith(b"["):
        try:
            records = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            return f"is not a valid JSON array ({str(e).splitlines()[0]}); {JSON_ALLOWED}, or one array of objects"
        if not records:
            return f"holds no records; {JSON_ALLOWED}"
        for i, record in enumerate(records):
            record = {"text": record} if isinstance(record, str) else record
            problem = _record_problem(record, f"item {i}", text_field)
            if problem:
                return problem
        return None
    n_records = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                return f"line {n} is not UTF-8 (byte {raw[e.start]:#04x}); {JSON_ALLOWED}, in UTF-8"
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                return f"line {n} is not valid JSON ({e.msg}, column {e.colno}); {JSON_ALLOWED}"
            problem = _record_problem(record, f"line {n}", text_field)
            if problem:
                return problem
            n_records += 1
    return None if n_records else f"holds no records; {JSON_ALLOWED}"


def parquet_problem(path: Path, text_field: str) -> str | None:
    """Why a .parquet file has no string column `text_field`, or None (reads only the footer)."""
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a file that is not Parquet
        return f"is not a readable Parquet file ({str(e).splitlines()[0]}); allowed: Parquet files"
    if text_field not in schema.names:
        return (f"has no column {text_field!r} (columns found: {', '.join(schema.names) or 'none'}); allowed: "
                f"files with the column data.text_field={text_field!r}, or data.text_field set to one of theirs")
    return None
