"""Tokenize a text source once into uint16 memmaps, reused while its metadata still matches.

Layout of a prepared directory `<cache_dir>/<source key>-<tokenizer>/`:

    train.bin, val.bin   the token ids of every document followed by the end-of-text token, uint16
    meta.json            what was tokenized and how (see `expected_meta`), token and document counts,
                         and the SHA-256 of each bin

Writing: the source's documents stream in batches to `num_proc` tokenizer processes, and each batch's
tokens are appended, in order, to `train.bin.tmp` / `val.bin.tmp` while their SHA-256 is updated, so
memory stays bounded (a few batches of ~1 MB of text per process) however large the corpus, and the
corpus length need not be known up front (streaming). At the end both files are fsynced and renamed to
`*.bin`, and `meta.json` is written last, atomically. `meta.json` is deleted before a rebuild starts.

Reuse: a directory is valid exactly when its meta.json equals what the config asks for (`expected_meta`)
and the bins have the sizes it records; with `verify="full"` (or "auto" and bins of at most 1 GiB) their
SHA-256 must also match. An interrupted preparation has no meta.json (and `.tmp` files at most), so it
never looks valid; it is redone, with the reason logged. So is one whose meta.json cannot be read
(not JSON, not an object, or missing the counts and hashes): it is rebuilt, not a traceback.

Read-only caches: a valid directory is used without taking the lock or writing anything, so a
cache on shared read-only storage works; one that must be (re)built where nothing may be written is
a ConfigError naming data.cache_dir.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from filelock import FileLock
from tqdm.auto import tqdm

import denselab
from denselab.config import ConfigError
from denselab.data.tokenizers import get_tokenizer
from denselab.io import atomic_write_json, atomic_write_text, display_path, sha256_file

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPLITS = ("train", "val")
VERIFY_MODES = ("auto", "full", "size")
AUTO_VERIFY_MAX_BYTES = 1 << 30   # "auto" hashes the bins on reuse up to this total size (~1 s)
BATCH_CHARS = 1 << 20             # characters of text per tokenizer task
NOT_PREPARED = "not prepared yet"
UNREADABLE_META = "unreadable meta.json"


def encode_documents(tokenizer_name: str, texts: list[str]) -> np.ndarray:
    """The token ids of `texts`, each document followed by the end-of-text token, as one uint16 array."""
    tok = get_tokenizer(tokenizer_name)
    encoded = tok.encode_batch(texts) if hasattr(tok, "encode_batch") else [tok.encode(t) for t in texts]
    ids = np.empty(sum(len(x) for x in encoded) + len(encoded), dtype=np.uint32)
    pos = 0
    for doc in encoded:
        ids[pos : pos + len(doc)] = doc
        ids[pos + len(doc)] = tok.eot_token
        pos += len(doc) + 1
    if ids.size and ids.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"tokenizer={tokenizer_name}: a token id does not fit in uint16")
    return ids.astype(np.uint16)


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
    if tokenizer_name.startswith("bpe:"):  # a trained BPE lives in the directory of its tokens
        return Path(tokenizer_name.removeprefix("bpe:")).parent
    return Path(cache_dir) / f"{source.cache_key()}-{tokenizer_name}"


def bpe_dir(source, vocab_size: int, cache_dir: str | Path) -> Path:
    """Where tokenizer=bpe keeps its tokenizer.json and the tokens it makes."""
    return Path(cache_dir) / f"{source.cache_key()}-bpe{vocab_size}"


def prepare_bpe(source, vocab_size: int, cache_dir: str | Path, num_proc: int = 1) -> str:
    """The spec ("bpe:<path>") of the BPE trained on `source`'s training split, training it once.

    The file is written atomically under a lock, so the jobs of a sweep train it once; an existing
    file is reused as it is (its SHA-256 is part of the tokens' meta.json, so tokens made with another
    tokenizer.json are never reused)."""
    from denselab.data.tokenizers import train_bpe

    path = bpe_dir(source, vocab_size, cache_dir) / "tokenizer.json"
    if path.is_file():
        return f"bpe:{path}"
    _check_writable(path.parent, cache_dir, NOT_PREPARED)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.parent) + ".lock"):
        if not path.is_file():
            try:
                source.check_available(path.parent)
            except ConfigError as e:
                raise ConfigError(f"data={source.name}: tokenizer=bpe is not trained in {display_path(path.parent)} "
                                  f"and {e}") from None
            started = time.perf_counter()
            log.info("Training a %d-token BPE on the training split of %s", vocab_size, source.name)
            texts = (t for split, docs in source.batches(num_proc=num_proc) if split == "train" for t in docs)
            atomic_write_text(path, train_bpe(texts, vocab_size))
            log.info("Trained the BPE in %.1f s: %s", time.perf_counter() - started, display_path(path))
    return f"bpe:{path}"


def _short(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def _difference(prepared, asked, path: str) -> str | None:
    """The first key path at which two JSON values differ, with both values; None when equal."""
    if isinstance(prepared, dict) and isinstance(asked, dict):
        for key in sorted(set(prepared) | set(asked), key=str):
            found = _difference(prepared.get(key), asked.get(key), f"{path}.{key}")
            if found:
                return found
        return None
    return None if prepared == asked else f"{path}: prepared {_short(prepared)}, asked {_short(asked)}"


def _read_meta(path: Path) -> tuple[dict | None, str | None]:
    """(meta.json's object, None), or (None, what is wrong with it) when it is not a JSON object with
    the token counts and bin hashes the reuse check and the data module read: a half-copied or
    hand-edited file must lead to a rebuild, not a KeyError on every retry."""
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as e:  # e.g. no read permission
        return None, f"cannot be read: {e.strerror or e}"
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return None, f"not JSON: {str(e).splitlines()[0]}"
    if not isinstance(meta, dict):
        return None, f"a JSON {type(meta).__name__}, not an object"
    for key, kind in (("tokens", int), ("documents", int), ("bin_sha256", str)):
        value = meta.get(key)
        if not (isinstance(value, dict) and all(isinstance(value.get(s), kind) for s in SPLITS)):
            return None, f"no {key}.train and {key}.val"
    return meta, None


def invalid_reason(directory: Path, expected: dict, verify: str = "auto") -> str | None:
    """Why `directory` cannot be reused (None when it can). `verify`: "size" checks the bins' sizes,
    "full" also their SHA-256, "auto" the SHA-256 only when the bins total at most 1 GiB."""
    meta_path = directory / "meta.json"
    if not meta_path.is_file():
        if not directory.exists():
            return NOT_PREPARED
        partial = sorted(p.name for p in directory.glob("*.tmp"))
        return "no complete preparation found" + (f" (an interrupted one left {', '.join(partial)})" if partial else "")
    meta, problem = _read_meta(meta_path)
    if problem:
        return f"{UNREADABLE_META} ({problem})"
    for key, value in expected.items():
        if meta.get(key) != value:
            detail = _difference(meta.get(key), value, key)
            return f"meta.json differs in '{key}' ({detail}): source or settings changed"
    sizes = {}
    for split in SPLITS:
        path = directory / f"{split}.bin"
        want = meta["tokens"][split] * np.dtype(np.uint16).itemsize
        sizes[split] = path.stat().st_size if path.is_file() else None
        if sizes[split] != want:
            return (f"{split}.bin is missing or has the wrong size ({sizes[split]} bytes, meta.json records "
                    f"{want:,}): truncated or still being written")
    if verify == "full" or (verify == "auto" and sum(sizes.values()) <= AUTO_VERIFY_MAX_BYTES):
        for split in SPLITS:
            if sha256_file(directory / f"{split}.bin") != meta["bin_sha256"][split]:
                return f"{split}.bin does not match its SHA-256 in meta.json: corrupted"
    return None


def prepare_tokens(source, tokenizer_name: str, cache_dir: str | Path, num_proc: int = 1,
                   verify: str = "auto") -> Path:
    """Return a valid prepared directory for (source, tokenizer), tokenizing only if needed.

    Raises ConfigError, before anything is deleted, downloaded or tokenized, when the directory must be
    (re)built and the source cannot be read here (a hub dataset without network access), its documents
    cannot be tokenized (`source.check_documents`), or the cache location is not writable."""
    if verify not in VERIFY_MODES:
        raise ConfigError(f"data.verify_bins={verify!r}: allowed {', '.join(VERIFY_MODES)}")
    directory = prepared_dir(source, tokenizer_name, cache_dir)
    expected = expected_meta(source, tokenizer_name)
    # A valid directory is used as it is, without the lock: taking it creates a file, which read-only
    # shared storage refuses. Safe, as a preparation only ever makes a directory valid at its very
    # end (meta.json written last) and never rewrites one that is valid for the same settings.
    reason = invalid_reason(directory, expected, verify)
    if reason is None:
        log.info("Reusing tokenized data in %s", directory)
        return directory
    _check_writable(directory, cache_dir, reason)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):  # concurrent jobs of a sweep wait for one preparation
        reason = invalid_reason(directory, expected, verify)  # another job may have prepared it meanwhile
        if reason is None:
            log.info("Reusing tokenized data in %s", directory)
            return directory
        try:
            source.check_available(directory)
        except ConfigError as e:
            shown = display_path(directory)
            state = f"not prepared in {shown}" if reason == NOT_PREPARED else f"{shown} is unusable ({reason})"
            raise ConfigError(f"data={source.name}: {state} and {e}") from None
        if hasattr(source, "check_documents"):
            source.check_documents()
        if reason == NOT_PREPARED:
            log.info("Tokenizing %s with %s into %s (%s)", source.name, tokenizer_name, directory, reason)
        elif reason.startswith(UNREADABLE_META):
            log.warning("%s: %s; rebuilding the cache", display_path(directory), reason)
        else:
            log.warning("Preparing %s again: %s", directory, reason)
        _build(directory, source, tokenizer_name, expected, num_proc)
        return directory


def _unwritable_folder(directory: Path) -> Path | None:
    """The folder that stops a preparation of `directory` (None when none does): the directory itself
    when it exists (bins and meta.json are replaced in it), and the folder that receives the lock
    file and the new directory (the nearest existing ancestor when the cache_dir is not made yet)."""
    for folder in (directory, directory.parent):
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        if not os.access(existing, os.W_OK | os.X_OK):
            return existing
    return None


def _check_writable(directory: Path, cache_dir: str | Path, reason: str) -> None:
    folder = _unwritable_folder(directory)
    if folder is not None:
        shown = display_path(directory)
        state = f"{shown} is not prepared" if reason == NOT_PREPARED else f"{shown} is unusable ({reason})"
        raise ConfigError(
            f"data.cache_dir={display_path(cache_dir)}: {state} and {display_path(folder)} is not writable; "
            "allowed: a writable data.cache_dir (or paths.data_dir), or a cache prepared elsewhere with "
            "the same settings (python -m denselab.data ...) and copied there")


def _build(directory: Path, source, tokenizer_name: str, expected: dict, num_proc: int) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "meta.json").unlink(missing_ok=True)  # invalid from here until the end
    for stale in directory.glob("*.tmp"):  # left by an interrupted preparation
        stale.unlink()
    started = time.perf_counter()
    writers = {split: _BinWriter(directory / f"{split}.bin") for split in SPLITS}
    try:
        _tokenize(source, tokenizer_name, num_proc, writers)
        for split, writer in writers.items():
            if writer.tokens == 0:
                raise ValueError(f"{split}.bin: the {split} split holds no documents")
        for writer in writers.values():
            writer.commit()
    finally:
        for writer in writers.values():
            writer.discard()  # a no-op after commit
    meta = dict(
        expected,
        tokens={s: w.tokens for s, w in writers.items()},
        documents={s: w.documents for s, w in writers.items()},
        bin_sha256={s: w.sha256 for s, w in writers.items()},
        prepared_at=datetime.now(timezone.utc).isoformat(),
        prepare_seconds=round(time.perf_counter() - started, 1),
        tokenizer_processes=num_proc,
        denselab_version=denselab.__version__,
    )
    atomic_write_json(directory / "meta.json", meta)
    log.info("Prepared %s: %s train / %s val tokens", directory, f"{meta['tokens']['train']:,}",
             f"{meta['tokens']['val']:,}")


class _BinWriter:
    """Appends uint16 token arrays to `<path>.tmp`, counting and hashing them; `commit` renames it."""

    def __init__(self, path: Path):
        self.path, self.tmp = path, path.with_name(path.name + ".tmp")
        self.file = open(self.tmp, "wb")
        self.hash = hashlib.sha256()
        self.tokens = self.documents = 0
        self.sha256: str | None = None

    def write(self, ids: np.ndarray, documents: int) -> None:
        data = ids.tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.tokens += ids.size
        self.documents += documents

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        self.sha256 = self.hash.hexdigest()

    def discard(self) -> None:
        if not self.file.closed:
            self.file.close()
            self.tmp.unlink(missing_ok=True)


def rebatch(batches: Iterator[tuple[str, list[str]]]) -> Iterator[tuple[str, list[str]]]:
    """Consecutive documents of one split in batches of about BATCH_CHARS characters (a longer
    document is a batch of its own): tasks big enough to amortise inter-process transfer, small
    enough to bound memory."""
    split, docs, chars = None, [], 0
    for batch_split, texts in batches:
        for text in texts:
            if docs and (batch_split != split or chars >= BATCH_CHARS):
                yield split, docs
                docs, chars = [], 0
            split = batch_split
            docs.append(text)
            chars += len(text)
    if docs:
        yield split, docs


def _tokenize(source, tokenizer_name: str, num_proc: int, writers: dict[str, _BinWriter]) -> None:
    """Stream the source's documents through `num_proc` tokenizer processes into the writers, in order.

    At most 2·num_proc batches are in flight, so memory does not grow with the corpus."""
    label = get_tokenizer(tokenizer_name).label  # "bpe2048", not the path inside a "bpe:<path>" spec
    progress = tqdm(desc=f"tokenizing {source.name} ({label}, {num_proc} proc)", unit=" doc",
                    mininterval=2.0, smoothing=0.05)

    def announce(total: int) -> None:
        progress.total = total
        progress.refresh()

    def write(split: str, ids: np.ndarray, n_docs: int) -> None:
        writers[split].write(ids, n_docs)
        progress.update(n_docs)
        progress.set_postfix_str(f"{sum(w.tokens for w in writers.values()):,} tokens", refresh=False)

    batches = rebatch(source.batches(num_proc=num_proc, announce_total=announce))
    try:
        if num_proc <= 1:
            for split, docs in batches:
                write(split, encode_documents(tokenizer_name, docs), len(docs))
            return
        with multiprocessing.get_context().Pool(num_proc) as pool:
            pending: deque = deque()
            for split, docs in batches:
                pending.append((split, len(docs), pool.apply_async(encode_documents, (tokenizer_name, docs))))
                if len(pending) >= 2 * num_proc:
                    split_done, n_docs, result = pending.popleft()
                    write(split_done, result.get(), n_docs)
            while pending:
                split_done, n_docs, result = pending.popleft()
                write(split_done, result.get(), n_docs)
    finally:
        progress.close()
