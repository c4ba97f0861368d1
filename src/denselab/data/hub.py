"""Paper-scale corpora from the Hugging Face hub (OpenWebText2, PG-19, WikiText-103) through `datasets`.

`HubDataset` is a text source like `corpus.PythonStdlib` and `corpus.TextFiles`: a `name`, a
`cache_key()`, a `fingerprint()` and the documents of its train and validation splits (`batches()`).
It reads a hub dataset of parquet/json files at a pinned revision with `datasets.load_dataset` (no
dataset scripts: `datasets` >= 4 does not run them), or, with `data_files`, local files in that
dataset's own column layout through the same call with the packaged builder ("parquet", "json") —
only the source differs, every later step is the same code.

Documents (`documents`):
  * "rows": every row's `text_field` is one document (OpenWebText2 web pages, PG-19 books).
  * "wikitext_articles": WikiText stores one line per row (non-empty lines end in "\\n", blank lines
    are ""); a document is one article: the rows from a top-level heading row " = Title = \\n" up to
    the next one, concatenated as stored. Rows before the first heading form a document of their own.

Validation split, exactly one of:
  * `val_split`: the dataset's own split of that name (PG-19 and WikiText-103: "validation").
  * `val_fraction` + `split_seed`: the official DenseFormer rule for OpenWebText2,
    `train.train_test_split(test_size=val_fraction, seed=split_seed, shuffle=True)` and 'test' is the
    validation split: with N rows, `np.random.default_rng(split_seed).permutation(N)`; its first
    ceil(val_fraction · N) entries are the validation rows, the rest the training rows, each in that
    permuted order. With `streaming=True` the rows cannot be permuted; the same permutation of
    N = `expected_rows` picks the same validation rows, and both splits are written in source order.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import datasets
import numpy as np

from denselab.config import ConfigError
from denselab.io import display_path, sha256_file

# Builders of `datasets` for local files in a hub dataset's layout, by file extension.
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
DOCUMENT_RULES = ("rows", "wikitext_articles")
HUB_PROBE_TIMEOUT_S = 3.0
ROWS_PER_READ = 128  # rows fetched from the dataset at a time (PG-19 books are ~0.4 MB each)
WIKITEXT_HEADING = re.compile(r"^ = [^=].* = \n?$")  # a top-level heading; sections are " = = x = = "


class HubUnreachableError(ConfigError):
    """The Hugging Face hub cannot be reached, so a hub dataset cannot be downloaded."""


def _is_true(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_unreachable_reason(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached now (None when it answers): `HF_HUB_OFFLINE` is set, or one HEAD
    request to the endpoint (`HF_ENDPOINT`, honouring proxy variables) gets no HTTP answer within
    `timeout` seconds. `datasets` itself retries for about half a minute before giving up; this
    answers in at most `timeout` seconds."""
    if _is_true(os.environ.get("HF_HUB_OFFLINE")) or _is_true(os.environ.get("HF_DATASETS_OFFLINE")):
        return "HF_HUB_OFFLINE is set"
    from huggingface_hub import constants

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError:
        return None  # the server answered, even if with an error status: it is reachable
    except (urllib.error.URLError, OSError) as e:
        why = getattr(e, "reason", e)
        return f"{endpoint} did not answer within {timeout:g} s: {why}"
    return None


def wikitext_articles(rows: Iterable[str]) -> Iterator[str]:
    """Group WikiText rows into articles (see the module docstring): a new article starts at every
    top-level heading row; rows are concatenated as stored."""
    article: list[str] = []
    for row in rows:
        if WIKITEXT_HEADING.match(row) and any(r.strip() for r in article):
            yield "".join(article)
            article = []
        article.append(row)
    if any(r.strip() for r in article):
        yield "".join(article)


def official_split_rows(n_rows: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train rows, validation rows) of `Dataset.train_test_split(test_size=val_fraction, seed=seed,
    shuffle=True)` over `n_rows` rows, in the order that call returns them."""
    permutation = np.random.default_rng(seed).permutation(n_rows)
    n_val = math.ceil(val_fraction * n_rows)
    return permutation[n_val:], permutation[:n_val]


class HubDataset:
    """A hub dataset (or local files in its layout) as a text source; see the module docstring.

    Args:
        name: short name, used for the cache directory and messages ("owt2").
        dataset_id: the hub id ("vietgpt/the_pile_openwebtext2"); revision: a commit hash pins the
            content (a branch such as "main" does not).
        config_name: the dataset's configuration ("wikitext-103-raw-v1"), or None.
        text_field: the column holding the text.
        documents: "rows" or "wikitext_articles".
        val_split / val_fraction + split_seed: the validation split (exactly one of the two).
        expected_rows: rows of the source's train split before any split is taken; preparation fails
            when the source has another count (an incomplete mirror). Required for a seeded split
            when streaming. None: not checked.
        streaming: read the rows while downloading (`load_dataset(streaming=True)`) instead of
            downloading and converting the whole dataset to Arrow first.
        data_files: local files in the dataset's layout instead of the hub: a list (all "train") or a
            mapping split -> files. Their content checksum is part of the fingerprint.
        cache_dir: `datasets`' cache for downloads and Arrow files.
    """

    def __init__(
        self,
        name: str,
        dataset_id: str,
        revision: str,
        config_name: str | None = None,
        text_field: str = "text",
        documents: str = "rows",
        val_split: str | None = None,
        val_fraction: float | None = None,
        split_seed: int | None = None,
        expected_rows: int | None = None,
        streaming: bool = False,
        data_files: list[str] | Mapping[str, str | list[str]] | None = None,
        cache_dir: str | None = None,
    ):
        for key, value in (("name", name), ("dataset_id", dataset_id), ("revision", revision)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"data.{key}={value!r}: allowed a non-empty string")
        if not isinstance(streaming, bool):
            raise ConfigError(f"data.streaming={streaming!r}: allowed true or false")
        if expected_rows is not None and (not isinstance(expected_rows, int) or expected_rows < 1):
            raise ConfigError(f"data.expected_rows={expected_rows!r}: allowed null or integers >= 1")
        if split_seed is not None and (not isinstance(split_seed, int) or isinstance(split_seed, bool)):
            raise ConfigError(f"data.split_seed={split_seed!r}: allowed integers")
        if documents not in DOCUMENT_RULES:
            raise ConfigError(f"data.documents={documents!r}: allowed {', '.join(DOCUMENT_RULES)}")
        if (val_split is None) == (val_fraction is None):
            raise ConfigError(f"data.val_split={val_split!r}, data.val_fraction={val_fraction!r}: "
                              "allowed exactly one of the two (the other null)")
        if val_fraction is not None:
            if not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
                raise ConfigError(f"data.val_fraction={val_fraction!r}: allowed 0 < val_fraction < 1")
            if split_seed is None:
                raise ConfigError("data.split_seed=None: allowed integers (a seeded split needs a seed)")
            if documents != "rows":
                raise ConfigError(f"data.documents={documents!r}: a seeded row split would cut articles apart; "
                                  "allowed with data.val_split (the source's own validation split)")
            if streaming and expected_rows is None:
                raise ConfigError("data.expected_rows=None: data.streaming=true with data.val_fraction needs the "
                                  "row count up front (the split is a permutation of all rows)")
        self.name, self.dataset_id, self.revision = name, dataset_id, revision
        self.config_name, self.text_field, self.documents = config_name, text_field, documents
        self.val_split, self.val_fraction, self.split_seed = val_split, val_fraction, split_seed
        self.expected_rows, self.streaming, self.cache_dir = expected_rows, streaming, cache_dir
        self.data_files = self._resolve_files(data_files) if data_files else None

    # -- identity ---------------------------------------------------------------------------------

    @staticmethod
    def _resolve_files(data_files) -> dict[str, list[str]]:
        if not isinstance(data_files, (str, list, tuple, Mapping)):
            raise ConfigError(f"data.data_files={data_files!r}: allowed null, files [a.parquet,...] or "
                              "{train: [...], validation: [...]}")
        mapping = dict(data_files) if isinstance(data_files, Mapping) else {"train": data_files}
        resolved = {}
        for split, files in mapping.items():
            files = [files] if isinstance(files, str) else list(files)
            resolved[split] = [str(Path(f).expanduser().resolve()) for f in files]
            for f in resolved[split]:
                if Path(f).suffix not in FILE_BUILDERS:
                    raise ConfigError(f"data.data_files: {f} has extension {Path(f).suffix!r}; "
                                      f"allowed: {', '.join(FILE_BUILDERS)}")
                if not Path(f).is_file():
                    raise ConfigError(f"data.data_files: {f} does not exist")
        builders = {FILE_BUILDERS[Path(f).suffix] for files in resolved.values() for f in files}
        if len(builders) != 1:
            raise ConfigError(f"data.data_files: mixes formats ({', '.join(sorted(builders))}); allowed one format")
        return resolved

    @property
    def builder(self) -> str | None:
        """The packaged builder for local files, None for the hub."""
        if self.data_files is None:
            return None
        return FILE_BUILDERS[Path(next(iter(self.data_files.values()))[0]).suffix]

    def cache_key(self) -> str:
        key = self.name
        if self.data_files is not None:  # local files never share a directory with the hub's data
            listing = "\n".join(f"{s}:{f}" for s, files in sorted(self.data_files.items()) for f in files)
            key += "-files-" + hashlib.sha1(listing.encode()).hexdigest()[:10]
        return key + ("-stream" if self.streaming else "")

    def split_rule(self) -> str:
        if self.val_split is not None:
            return f"the source's own splits: train='train', val={self.val_split!r}"
        rule = (f"train_test_split(test_size={self.val_fraction}, seed={self.split_seed}, shuffle=True) "
                "of 'train', val='test'")
        if self.streaming:
            rule += f" (streaming: the same val rows from the permutation of {self.expected_rows} rows; " \
                    "both splits in source order)"
        return rule

    def document_rule(self) -> str:
        if self.documents == "rows":
            return f"one document per row (column {self.text_field!r})"
        return f"one document per article: rows of column {self.text_field!r} from one top-level heading " \
               "' = Title = ' to the next, concatenated as stored"

    def fingerprint(self) -> dict:
        """What the token cache must match: the dataset id, revision and configuration, the split and
        document rules, the text field, and for local files their content checksums."""
        files = None
        if self.data_files is not None:
            files = {split: [{"path": f, "bytes": Path(f).stat().st_size, "sha256": sha256_file(f)}
                             for f in fs] for split, fs in sorted(self.data_files.items())}
        return {
            "source": "hub" if files is None else f"local files ({self.builder}) in the layout of the hub dataset",
            "name": self.name,
            "dataset_id": self.dataset_id,
            "revision": self.revision,
            "config_name": self.config_name,
            "data_files": files,
            "text_field": self.text_field,
            "documents": self.document_rule(),
            "split_rule": self.split_rule(),
            "streaming": self.streaming,
            "expected_rows": self.expected_rows,
        }

    # -- availability -----------------------------------------------------------------------------

    def check_available(self, directory: Path) -> None:
        """Raise HubUnreachableError, within seconds, when the documents cannot be read now: the hub
        does not answer (and no local `data_files` replace it). `directory` is where the prepared
        tokens were expected; the message says how to get them there."""
        if self.data_files is not None:
            for f in (f for files in self.data_files.values() for f in files):
                if not Path(f).is_file():
                    raise ConfigError(f"data.data_files: {f} does not exist")
            return
        why = hub_unreachable_reason()
        if why is not None:
            raise HubUnreachableError(
                f"the Hugging Face hub is unreachable ({why}): run `make data-{self.name}` on a machine with "
                f"internet access, then copy its {directory.name}/ into {display_path(directory.parent)}/")

    # -- documents --------------------------------------------------------------------------------

    def _load(self, num_proc: int):
        """`load_dataset` of every split: a DatasetDict, or an IterableDatasetDict when streaming."""
        if self.data_files is not None:
            kwargs: dict[str, Any] = {"path": self.builder, "data_files": self.data_files}
        else:
            kwargs = {"path": self.dataset_id, "name": self.config_name, "revision": self.revision}
        if not self.streaming and num_proc > 1:
            kwargs["num_proc"] = num_proc  # parallel download and Arrow conversion
        return datasets.load_dataset(**kwargs, streaming=self.streaming, cache_dir=self.cache_dir)

    def _split(self, splits, name: str):
        if name not in splits:
            key = f"data.val_split={name!r}" if name == self.val_split else f"split {name!r}"
            raise ConfigError(f"{key}: not a split of {self._where()} (splits: {sorted(splits)}; "
                              "the training split must be 'train')")
        ds = splits[name]
        columns = ds.column_names  # None for a stream whose features are only known once read
        if columns is None:
            return ds
        if self.text_field not in columns:
            raise ConfigError(f"data.text_field={self.text_field!r}: not a column of {self._where()} "
                              f"(columns: {columns})")
        return ds.select_columns([self.text_field])

    def _where(self) -> str:
        return "the data files" if self.data_files is not None else f"{self.dataset_id}@{self.revision}"

    def _check_rows(self, n_rows: int) -> None:
        if self.expected_rows is not None and n_rows != self.expected_rows:
            raise ConfigError(
                f"data.expected_rows={self.expected_rows}: found {n_rows:,} rows in split 'train' of {self._where()} "
                "(an incomplete or different copy?); set data.expected_rows to the count, or null, to accept it")

    def _texts(self, ds) -> Iterator[list[str]]:
        for batch in ds.iter(batch_size=ROWS_PER_READ):
            yield batch[self.text_field]

    def _documents(self, row_batches: Iterable[list[str]]) -> Iterator[list[str]]:
        if self.documents == "rows":
            yield from row_batches
            return
        article_batch: list[str] = []
        for article in wikitext_articles(row for rows in row_batches for row in rows):
            article_batch.append(article)
            if len(article_batch) == ROWS_PER_READ:
                yield article_batch
                article_batch = []
        if article_batch:
            yield article_batch

    def batches(self, num_proc: int = 1, announce_total: Callable[[int], None] | None = None
                ) -> Iterator[tuple[str, list[str]]]:
        """(split, documents) batches, "val" and "train", each split's documents in order. Calls
        `announce_total(n)` with the number of documents once it is known (for a progress bar)."""
        splits = self._load(num_proc)
        train = self._split(splits, "train")
        if self.val_split is not None:
            val = self._split(splits, self.val_split)
            if not self.streaming:
                self._check_rows(len(train))
                if announce_total and self.documents == "rows":
                    announce_total(len(train) + len(val))
            for split, ds in (("val", val), ("train", train)):
                for docs in self._documents(self._counted(self._texts(ds), split == "train")):
                    yield split, docs
            return
        if not self.streaming:
            self._check_rows(len(train))
            if announce_total:
                announce_total(len(train))
            parts = train.train_test_split(test_size=self.val_fraction, seed=self.split_seed, shuffle=True)
            for split, ds in (("val", parts["test"]), ("train", parts["train"])):
                for docs in self._texts(ds):
                    yield split, docs
            return
        # Streaming with the seeded split: one pass, each row routed by the official permutation.
        if announce_total:
            announce_total(self.expected_rows)
        is_val = np.zeros(self.expected_rows, dtype=bool)
        is_val[official_split_rows(self.expected_rows, self.val_fraction, self.split_seed)[1]] = True
        row = 0
        for texts in self._texts(train):
            if row + len(texts) > self.expected_rows:
                self._check_rows(row + len(texts))  # more rows than the permutation covers
            flags = is_val[row : row + len(texts)]
            row += len(texts)
            for split, keep in (("val", flags), ("train", ~flags)):
                docs = [t for t, k in zip(texts, keep) if k]
                if docs:
                    yield split, docs
        self._check_rows(row)

    def _counted(self, batches: Iterator[list[str]], check: bool) -> Iterator[list[str]]:
        """Pass row batches through; when streaming the train split, check the row count at its end."""
        n = 0
        for rows in batches:
            n += len(rows)
            yield rows
        if check and self.streaming:
            self._check_rows(n)

