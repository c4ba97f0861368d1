"""Text sources, each giving a train and a validation `datasets.Dataset` of documents (column "text").

Every source has the interface the token cache (`prepare.py`) uses: `name`, `cache_key()` (the
prepared directory's name), `fingerprint()` (see below), `check_available(directory)` (raise a
ConfigError when the documents cannot be read here) and `batches()` (the documents of both splits).

* `PythonStdlib` — the default corpus: the source files of the Python standard library that ships
  with the running interpreter. Real text (code, docstrings, comments) written by the CPython
  developers, no download, identical on every machine with the same Python build.
* `TextFiles` — bring your own .txt / .jsonl / .parquet files, loaded with `datasets`.
* `hub.HubDataset` — OpenWebText2, PG-19, WikiText-103 (or local files in their layout).

A source also gives a `fingerprint()`: a checksum of its content and the settings that shape it,
which the token cache (`prepare.py`) compares before reusing a tokenization.
"""

from __future__ import annotations

import hashlib
import platform
import sysconfig
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import datasets

from denselab.config import ConfigError
from denselab.io import hash_file

# Path components never taken from the standard library: third-party packages and test suites
# (the test suites are large, repetitive and full of deliberately odd text).
STDLIB_EXCLUDED_PARTS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
MIN_STDLIB_BYTES = 5_000_000


class CorpusError(ValueError):
    """A data source that cannot be used as configured."""


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
        rel = (p.relative_to(self.root) for p in self.root.rglob("*.py"))
        return sorted(r.as_posix() for r in rel if not STDLIB_EXCLUDED_PARTS.intersection(r.parts))

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
        self.paths = [str(Path(p).expanduser().resolve()) for p in paths]
        self.val_paths = [str(Path(p).expanduser().resolve()) for p in (val_paths or [])]
        self.val_fraction = float(val_fraction)
        self.text_field = text_field
        self.cache_dir = cache_dir
        if not self.paths:
            raise CorpusError("data.paths=[]: give at least one .txt, .jsonl or .parquet file")
        for key, group in (("data.paths", self.paths), ("data.val_paths", self.val_paths)):
            for p in group:
                if Path(p).suffix not in self.BUILDERS:
                    raise CorpusError(f"{key}: {p} has extension {Path(p).suffix!r}; allowed: {', '.join(self.BUILDERS)}")
                if not Path(p).is_file():
                    raise CorpusError(f"{key}: {p} does not exist")
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
