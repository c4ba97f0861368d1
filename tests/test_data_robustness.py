"""Bad inputs and awkward caches of `data=text` (issue 19): one-line ConfigErrors before any work,
folders and glob patterns in data.paths, garbled meta.json, read-only prepared caches."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY, run_cli
from denselab.config import ConfigError
from denselab.data import TextFiles, corpus
from denselab.data.datamodule import TokenDataModule
from denselab.data.prepare import prepare_tokens, prepared_dir


def write_docs(folder: Path, n: int = 6, prefix: str = "doc") -> list[Path]:
    """`n` small, distinct UTF-8 .txt documents in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"{prefix}{i}.txt"
        path.write_text(f"Document {i} of {prefix}: the quick brown fox jumps over the lazy dog. " * (i + 2))
        paths.append(path)
    return paths


@pytest.fixture
def val_file(tmp_path) -> Path:
    path = tmp_path / "val" / "val.txt"
    path.parent.mkdir()
    path.write_text("A validation document that is long enough to hold a few windows. " * 4)
    return path


def source_with(bad: Path, good: list[Path], val_file: Path, **kwargs) -> TextFiles:
    return TextFiles([str(p) for p in good] + [str(bad)], val_paths=[str(val_file)], **kwargs)


def refuse_before_work(source: TextFiles, cache: Path) -> str:
    """prepare_tokens' ConfigError message; checks it is one line and that no prepared directory
    (no .tmp bins, no meta.json) was started."""
    with pytest.raises(ConfigError) as info:
        prepare_tokens(source, "byte", cache)
    message = str(info.value)
    assert "\n" not in message
    assert not prepared_dir(source, "byte", cache).exists()
    return message


# ----------------------------------------------------------------------------------------------
# 1. Bad text inputs: one line naming data.paths, the file and what is allowed, before tokenizing
# ----------------------------------------------------------------------------------------------

def test_empty_txt_is_refused_before_tokenization(tmp_path, val_file):
    bad = tmp_path / "empty.txt"
    bad.write_bytes(b"")
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} is empty; allowed: ")


def test_binary_file_given_as_txt_is_refused_before_tokenization(tmp_path, val_file):
    bad = tmp_path / "image.txt"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 8)
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} is binary (a NUL byte at offset 8); allowed: ")


def test_non_utf8_txt_is_refused_with_the_offending_byte(tmp_path, val_file):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"caf\xe9 au lait")
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} is not UTF-8 (byte 0xe9 at offset 3); "
                              "allowed: .txt files holding UTF-8 text")


def test_txt_read_in_chunks_reports_the_file_offset_of_a_bad_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(corpus, "READ_CHUNK", 4)  # "abc" + the first byte of "é" | the rest of "é", ...
    text = tmp_path / "chunked.txt"
    text.write_bytes("abcé".encode() + b"d\xe9x")
    assert corpus.txt_problem(text, "text").startswith("is not UTF-8 (byte 0xe9 at offset 6)")
    text.write_bytes("abcé".encode() + b"d\x00x")
    assert corpus.txt_problem(text, "text").startswith("is binary (a NUL byte at offset 6)")
    text.write_bytes("abcé dé".encode())
    assert corpus.txt_problem(text, "text") is None


def test_jsonl_without_the_text_field_names_the_field_and_the_keys_found(tmp_path, val_file):
    bad = tmp_path / "records.jsonl"
    bad.write_text(json.dumps({"body": "a document", "id": 1}) + "\n")
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} line 1 has no field 'text' (keys found: body, id); allowed: ")
    assert "data.text_field" in message


def test_jsonl_with_an_invalid_line_names_the_file_and_line_number(tmp_path, val_file):
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"text": "fine"}\n\n{"text": "cut off\n')
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} line 3 is not valid JSON (")
    assert message.endswith("allowed: one JSON object per line")


def test_parquet_without_the_text_field_is_refused_before_tokenization(tmp_path, val_file):
    bad = tmp_path / "table.parquet"
    pq.write_table(pa.table({"body": ["a document"]}), bad)
    message = refuse_before_work(source_with(bad, write_docs(tmp_path / "docs"), val_file), tmp_path / "cache")
    assert message.startswith(f"data.paths: {bad} has no column 'text' (columns found: body); allowed: ")


def test_bad_validation_file_names_data_val_paths(tmp_path):
    bad = tmp_path / "val.txt"
    bad.write_bytes(b"")
    source = TextFiles([str(p) for p in write_docs(tmp_path / "docs")], val_paths=[str(bad)])
    assert refuse_before_work(source, tmp_path / "cache").startswith(f"data.val_paths: {bad} is empty")


def test_run_py_prints_one_error_line_for_an_empty_txt(tmp_path, val_file):
    docs = write_docs(tmp_path / "docs", n=4)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    paths = ",".join(str(p) for p in [*docs, empty])
    proc = run_cli(["data=text", f"data.paths=[{paths}]", f"data.val_paths=[{val_file}]", *TINY],
                   tmp_path / "logs", tmp_path / "data", check=False, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: data.paths: {empty} is empty; allowed: .txt files holding UTF-8 text")


# ----------------------------------------------------------------------------------------------
# 2. Folders and glob patterns in data.paths
# ----------------------------------------------------------------------------------------------

def test_folder_in_paths_is_its_supported_files_recursively_sorted(tmp_path):
    corpus = tmp_path / "corpus"
    write_docs(corpus / "b", n=2)
    write_docs(corpus / "a", n=2)
    (corpus / "z.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    (corpus / "README.md").write_text("not a document")
    (corpus / ".hidden.txt").write_text("an editor's backup")
    source = TextFiles([str(corpus)], val_paths=[str(corpus / "z.jsonl")])
    assert source.paths == [str(corpus / p) for p in ("a/doc0.txt", "a/doc1.txt", "b/doc0.txt", "b/doc1.txt",
                                                      "z.jsonl")]


def test_glob_pattern_in_paths_is_expanded_and_sorted(tmp_path):
    write_docs(tmp_path / "corpus", n=3, prefix="x")
    write_docs(tmp_path / "corpus" / "deep", n=2, prefix="y")
    (tmp_path / "corpus" / "other.jsonl").write_text(json.dumps({"text": "a record"}) + "\n")
    flat = TextFiles([str(tmp_path / "corpus" / "*.txt")], val_fraction=0.5)
    assert flat.paths == [str(tmp_path / "corpus" / f"x{i}.txt") for i in range(3)]
    deep = TextFiles([str(tmp_path / "corpus" / "**" / "*.txt")], val_fraction=0.5)
    assert deep.paths == sorted([*flat.paths, *(str(tmp_path / "corpus" / "deep" / f"y{i}.txt") for i in range(2))])


def test_glob_and_the_same_files_listed_explicitly_share_one_cache(tmp_path, val_file, caplog):
    docs = write_docs(tmp_path / "corpus", n=5)
    explicit = TextFiles([str(p) for p in sorted(docs)], val_paths=[str(val_file)])
    pattern = TextFiles([str(tmp_path / "corpus" / "doc*.txt")], val_paths=[str(val_file)])
    assert pattern.cache_key() == explicit.cache_key() and pattern.fingerprint() == explicit.fingerprint()
    directory = prepare_tokens(explicit, "byte", tmp_path / "cache")
    stamp = (directory / "train.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        assert prepare_tokens(pattern, "byte", tmp_path / "cache") == directory
    assert "Reusing" in caplog.text and (directory / "train.bin").stat().st_mtime_ns == stamp


def test_glob_expansion_is_the_same_on_every_construction(tmp_path):
    write_docs(tmp_path / "corpus", n=8)
    pattern = str(tmp_path / "corpus" / "*.txt")
    first = TextFiles([pattern], val_fraction=0.5)
    assert all(TextFiles([pattern], val_fraction=0.5).paths == first.paths for _ in range(3))
    assert first.fingerprint() == TextFiles([pattern], val_fraction=0.5).fingerprint()


def test_glob_matching_nothing_is_a_config_error_naming_the_pattern(tmp_path):
    pattern = str(tmp_path / "nowhere" / "*.txt")
    with pytest.raises(ConfigError, match=r"^data\.paths: the pattern '.*nowhere/\*\.txt' matches no .txt, .jsonl"):
        TextFiles([pattern])


def test_folder_without_supported_files_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.md").write_text("not a document")
    with pytest.raises(ConfigError, match=rf"^data\.paths: the folder {tmp_path / 'notes'} holds no .txt, .jsonl"):
        TextFiles([str(tmp_path / "notes")])


# ----------------------------------------------------------------------------------------------
# 3. A garbled meta.json is rebuilt, with one line saying so
# ----------------------------------------------------------------------------------------------

GARBLED_META = {
    "invalid_json": lambda meta: b'{"format_version": 1, "tokens": {"tra',
    "not_utf8": lambda meta: b"\xff\xfe\x00garbage",
    "not_an_object": lambda meta: b"[1, 2, 3]",
    "missing_tokens": lambda meta: json.dumps({k: v for k, v in meta.items() if k != "tokens"}).encode(),
    "missing_bin_sha256": lambda meta: json.dumps({k: v for k, v in meta.items() if k != "bin_sha256"}).encode(),
}


@pytest.mark.parametrize("garble", GARBLED_META, ids=list(GARBLED_META))
def test_garbled_meta_json_is_reported_in_one_line_and_rebuilt(tmp_path, val_file, caplog, garble):
    source = TextFiles([str(p) for p in write_docs(tmp_path / "docs")], val_paths=[str(val_file)])
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    good_bins = {s: (directory / f"{s}.bin").read_bytes() for s in ("train", "val")}
    meta = json.loads((directory / "meta.json").read_text())
    (directory / "meta.json").write_bytes(GARBLED_META[garble](meta))
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        assert prepare_tokens(source, "byte", tmp_path / "cache") == directory
    lines = [r.getMessage() for r in caplog.records if "unreadable meta.json" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert lines[0].startswith(f"{directory}: unreadable meta.json (") and lines[0].endswith("; rebuilding the cache")
    rebuilt = json.loads((directory / "meta.json").read_text())
    assert rebuilt["tokens"] == meta["tokens"] and rebuilt["bin_sha256"] == meta["bin_sha256"]
    assert {s: (directory / f"{s}.bin").read_bytes() for s in ("train", "val")} == good_bins


# ----------------------------------------------------------------------------------------------
# 4. Read-only prepared caches
# ----------------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(mode, size, mtime_ns) of `root` and everything below it."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.stat().st_size, p.stat().st_mtime_ns)
            for p in [root, *sorted(root.rglob("*"))]}


def make_read_only(root: Path) -> None:
    for p in sorted(root.rglob("*"), reverse=True) + [root]:
        p.chmod(0o555 if p.is_dir() else 0o444)


@pytest.fixture
def restore_permissions(tmp_path):
    """Make everything writable again afterwards, so pytest can delete tmp_path."""
    yield
    for p in [tmp_path, *tmp_path.rglob("*")]:
        p.chmod(stat.S_IMODE(p.stat().st_mode) | stat.S_IWUSR | (stat.S_IXUSR if p.is_dir() else 0))


def test_valid_read_only_cache_is_used_without_writing_anything(tmp_path, val_file, caplog, restore_permissions):
    docs = [str(p) for p in write_docs(tmp_path / "docs")]
    cache = tmp_path / "shared"
    directory = prepare_tokens(TextFiles(docs, val_paths=[str(val_file)]), "byte", cache)
    # A cache copied onto shared storage: the bins and meta.json, no lock file of the job that made it.
    Path(str(directory) + ".lock").unlink(missing_ok=True)
    make_read_only(cache)
    before = snapshot(cache)
    dm = TokenDataModule(TextFiles(docs, val_paths=[str(val_file)]), tokenizer="byte", seq_len=8, batch_size=2,
                         seed=0, cache_dir=str(cache), val_windows=2)
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        dm.prepare_data()
    dm.setup()
    x, y = dm.train_dataloader().dataset.batch(0)
    assert x.shape == (2, 8) and len(list(dm.val_dataloader())) >= 1
    assert "Reusing" in caplog.text
    assert snapshot(cache) == before  # no lock file, no .tmp, no meta.json rewrite


def test_absent_cache_in_a_read_only_cache_dir_is_a_config_error(tmp_path, val_file, restore_permissions):
    cache = tmp_path / "shared"
    cache.mkdir()
    cache.chmod(0o555)
    if os.access(cache, os.W_OK):
        pytest.skip("chmod 0o555 does not stop this user from writing (root): see the os.access test below")
    source = TextFiles([str(p) for p in write_docs(tmp_path / "docs")], val_paths=[str(val_file)])
    with pytest.raises(ConfigError) as info:
        prepare_tokens(source, "byte", cache)
    message = str(info.value)
    assert message.startswith(f"data.cache_dir={cache}: ") and "not writable" in message and "\n" not in message
    assert list(cache.iterdir()) == []


def test_stale_cache_on_storage_the_os_reports_unwritable_is_a_config_error_and_left_as_is(
        tmp_path, val_file, monkeypatch):
    """Shared storage as root sees it too (a read-only mount): os.access says no writing below `cache`."""
    docs = write_docs(tmp_path / "docs")
    cache = tmp_path / "shared"
    directory = prepare_tokens(TextFiles([str(p) for p in docs], val_paths=[str(val_file)]), "byte", cache)
    docs[0].write_text("This document changed after the cache was prepared. " * 3)
    before = snapshot(cache)
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        below = Path(path).resolve().is_relative_to(cache.resolve())
        return False if below and mode & os.W_OK else real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", access)
    with pytest.raises(ConfigError) as info:
        prepare_tokens(TextFiles([str(p) for p in docs], val_paths=[str(val_file)]), "byte", cache)
    message = str(info.value)
    assert message.startswith(f"data.cache_dir={cache}: {directory} ") and "\n" not in message
    assert "differs in 'source'" in message and "not writable" in message and "allowed: " in message
    assert snapshot(cache) == before
    assert np.fromfile(directory / "train.bin", dtype=np.uint16).size > 0
