"""Tokenize a text source once into uint16 memmaps, reused while its metadata still matches.

Layout of a prepared directory `<cache_dir>/<source key>-<tokenizer>/`:

    train.bin, val.bin   the token ids of every document followed by the end-of-text token, uint16
    meta.json            what was tokenized and how (see `expected_meta`), and the token counts

`meta.json` is written last and atomically, after both bins are in place, and deleted first when a
rebuild starts: a directory is valid exactly when its meta.json equals what the config asks for and
the bins have the sizes it records. An interrupted preparation therefore never looks valid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
from filelock import FileLock

from denselab.data.tokenizers import get_tokenizer
from denselab.io import atomic_write_json

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")


def _tokenize_batch(batch: dict, tokenizer_name: str) -> dict:
    tok = get_tokenizer(tokenizer_name)
    ids = [tok.encode(text) + [tok.eot_token] for text in batch["text"]]
    return {"ids": ids, "n_tokens": [len(x) for x in ids]}


def expected_meta(source, tokenizer_name: str) -> dict:
    """The part of meta.json that must match for a prepared directory to be reused."""
    tok = get_tokenizer(tokenizer_name)
    return {
        "format_version": FORMAT_VERSION,
        "dtype": "uint16",
        "tokenizer": tok.name,
        "vocab_size": tok.vocab_size,
        "eot_token": tok.eot_token,
        "tokenizer_files_sha256": tok.file_hashes(),
        "source": source.fingerprint(),
    }


def prepared_dir(source, tokenizer_name: str, cache_dir: str | Path) -> Path:
    return Path(cache_dir) / f"{source.cache_key()}-{tokenizer_name}"


def invalid_reason(directory: Path, expected: dict) -> str | None:
    """Why `directory` cannot be reused (None when it can)."""
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        return "no complete preparation found" if directory.exists() else "not prepared yet"
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        return "meta.json is unreadable"
    for key, value in expected.items():
        if meta.get(key) != value:
            return f"meta.json differs in '{key}' (source or settings changed)"
    for split in SPLITS:
        path = directory / f"{split}.bin"
        want = meta["tokens"][split] * np.dtype(np.uint16).itemsize
        if not path.is_file() or path.stat().st_size != want:
            return f"{split}.bin is missing or has the wrong size"
    return None


def prepare_tokens(source, tokenizer_name: str, cache_dir: str | Path, num_proc: int = 1) -> Path:
    """Return a valid prepared directory for (source, tokenizer), tokenizing only if needed."""
    directory = prepared_dir(source, tokenizer_name, cache_dir)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):  # concurrent jobs of a sweep wait for one preparation
        expected = expected_meta(source, tokenizer_name)
        reason = invalid_reason(directory, expected)
        if reason is None:
            log.info("Reusing tokenized data in %s", directory)
            return directory
        log.info("Tokenizing %s with %s into %s (%s)", source.name, tokenizer_name, directory, reason)
        _build(directory, source, tokenizer_name, expected, num_proc)
        return directory


def _build(directory: Path, source, tokenizer_name: str, expected: dict, num_proc: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)  # invalid from here until the end
    splits = source.load()
    tokens, documents, bin_sha256 = {}, {}, {}
    for split in SPLITS:
        docs = splits[split]
        tokenized = docs.map(
            _tokenize_batch,
            batched=True,
            fn_kwargs={"tokenizer_name": tokenizer_name},
            remove_columns=docs.column_names,
            num_proc=num_proc if num_proc > 1 and len(docs) > 1 else None,
            desc=f"tokenizing {split} ({tokenizer_name})",
        )
        tokens[split], bin_sha256[split] = _write_bin(tokenized, directory / f"{split}.bin")
        documents[split] = len(docs)
    meta = dict(expected, tokens=tokens, documents=documents, bin_sha256=bin_sha256)
    atomic_write_json(directory / "meta.json", meta)
    log.info("Prepared %s: %s train / %s val tokens", directory, f"{tokens['train']:,}", f"{tokens['val']:,}")


def _write_bin(tokenized: datasets.Dataset, path: Path) -> tuple[int, str]:
    """Write the concatenated "ids" of `tokenized` to `path` (via a temporary file), chunk by chunk."""
    n = int(sum(tokenized["n_tokens"]))
    if n == 0:
        raise ValueError(f"{path.name}: the split holds no text")
    tmp = path.with_name(path.name + ".tmp")
    arr = np.memmap(tmp, dtype=np.uint16, mode="w+", shape=(n,))
    pos = 0
    for chunk in tokenized.data.column("ids").chunks:  # pyarrow list<int64> chunks: bounded memory
        values = chunk.flatten().to_numpy()
        if values.size and values.max() > np.iinfo(np.uint16).max:
            raise ValueError("token id does not fit in uint16")
        arr[pos : pos + values.size] = values
        pos += values.size
    assert pos == n, (pos, n)
    arr.flush()
    digest = hashlib.sha256(memoryview(arr)).hexdigest()
    del arr
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n, digest
