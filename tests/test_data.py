"""Corpora, the token cache and the window samplers."""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from denselab.config import ConfigError
from denselab.data import PythonStdlib, TextFiles, get_tokenizer
from denselab.data.corpus import CorpusError
from denselab.data.datamodule import TokenDataModule, TrainWindows, ValWindows, text_data
from denselab.data.prepare import prepare_tokens

DOCS = [f"Document number {i}: the quick brown fox jumps over the lazy dog. " * (i % 5 + 1) for i in range(60)]


@pytest.fixture
def corpus_files(tmp_path):
    """The same documents as .jsonl, .parquet and .txt files."""
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS[:30])))
    parquet = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS[30:50]}), parquet)
    txts = []
    for i, d in enumerate(DOCS[50:]):
        txt = tmp_path / f"doc{i}.txt"
        txt.write_text(d)
        txts.append(txt)
    return [jsonl, parquet, *txts]


def test_stdlib_corpus_is_large_real_python_without_tests():
    corpus = PythonStdlib()
    files = corpus.files()
    assert "os.py" in files and "json/decoder.py" in files
    assert not any("site-packages" in f or f.startswith("test/") or "/tests/" in f for f in files)
    fp = corpus.fingerprint()
    assert fp["python_version"] and len(fp["file_list_sha256"]) == 64 and fp["n_files"] == len(files)
    splits = corpus.load()
    chars = sum(len(t) for s in splits.values() for t in s["text"])
    assert chars >= 5_000_000
    assert set(splits["val"]["path"]) == {f for f in files if corpus.is_validation(f)}
    assert 0.02 < len(splits["val"]) / len(files) < 0.10  # the crc32 rule takes ~5 % of the files


def test_stdlib_fingerprint_is_stable():
    assert PythonStdlib().fingerprint() == PythonStdlib().fingerprint()


def test_text_files_of_three_formats_are_tokenized_with_end_of_text_after_each_document(corpus_files, tmp_path):
    source = TextFiles([str(p) for p in corpus_files], val_fraction=0.2)
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    meta = json.loads((directory / "meta.json").read_text())
    splits = source.load()
    tok = get_tokenizer("byte")
    for split in ("train", "val"):
        expected = [t for d in splits[split]["text"] for t in tok.encode(d) + [tok.eot_token]]
        tokens = np.memmap(directory / f"{split}.bin", dtype=np.uint16, mode="r")
        assert tokens.tolist() == expected
        assert meta["tokens"][split] == len(expected)
    assert sorted(list(splits["train"]["text"]) + list(splits["val"]["text"])) == sorted(DOCS)
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 257
    assert meta["source"]["source_sha256"] == source.fingerprint()["source_sha256"]


def test_prepared_tokens_are_reused_when_metadata_matches(corpus_files, tmp_path, caplog):
    source = TextFiles([str(p) for p in corpus_files])
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    stamp = (directory / "train.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(TextFiles([str(p) for p in corpus_files]), "byte", tmp_path / "cache")
    assert "Reusing" in caplog.text
    assert (directory / "train.bin").stat().st_mtime_ns == stamp


def test_changed_source_is_retokenized(corpus_files, tmp_path, caplog):
    source = TextFiles([str(p) for p in corpus_files])
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    before = json.loads((directory / "meta.json").read_text())["tokens"]
    corpus_files[-1].write_text("A new, much longer final document. " * 100)
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(source, "byte", tmp_path / "cache")
    assert "differs in 'source'" in caplog.text
    after = json.loads((directory / "meta.json").read_text())["tokens"]
    assert sum(after.values()) > sum(before.values())


def test_truncated_bin_is_detected_and_rebuilt(corpus_files, tmp_path, caplog):
    source = TextFiles([str(p) for p in corpus_files])
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    good = (directory / "train.bin").read_bytes()
    (directory / "train.bin").write_bytes(good[:100])
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(source, "byte", tmp_path / "cache")
    assert "wrong size" in caplog.text
    assert (directory / "train.bin").read_bytes() == good


def test_preparation_without_meta_is_redone(corpus_files, tmp_path, caplog):
    """An interrupted preparation leaves no meta.json, so it never looks valid."""
    source = TextFiles([str(p) for p in corpus_files])
    directory = prepare_tokens(source, "byte", tmp_path / "cache")
    (directory / "meta.json").unlink()
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(source, "byte", tmp_path / "cache")
    assert "no complete preparation" in caplog.text and (directory / "meta.json").is_file()


def test_other_tokenizer_gets_its_own_directory(corpus_files, tmp_path):
    source = TextFiles([str(p) for p in corpus_files])
    byte_dir = prepare_tokens(source, "byte", tmp_path / "cache")
    gpt2_dir = prepare_tokens(source, "gpt2", tmp_path / "cache")
    assert byte_dir != gpt2_dir
    meta = json.loads((gpt2_dir / "meta.json").read_text())
    assert meta["vocab_size"] == 50257 and meta["tokenizer_files_sha256"]
    assert meta["tokens"]["train"] < json.loads((byte_dir / "meta.json").read_text())["tokens"]["train"]


def test_unsupported_extension_is_refused(tmp_path):
    bad = tmp_path / "notes.docx"
    bad.write_text("x")
    with pytest.raises(CorpusError, match=r"data.paths: .*notes.docx has extension '.docx'; allowed: .txt"):
        TextFiles([str(bad)])


def test_single_document_without_validation_files_is_refused(tmp_path):
    one = tmp_path / "one.txt"
    one.write_text("only one document")
    with pytest.raises(CorpusError, match="data.val_paths"):
        TextFiles([str(one)]).load()


def test_training_windows_are_a_pure_function_of_seed_and_index(tmp_path):
    path = tmp_path / "t.bin"
    np.arange(5000, dtype=np.uint16).tofile(path)
    a, b = TrainWindows(path, 16, 4, seed=1), TrainWindows(path, 16, 4, seed=1)
    assert torch.equal(a.batch(7)[0], b.batch(7)[0])
    assert not torch.equal(a.batch(7)[0], TrainWindows(path, 16, 4, seed=2).batch(7)[0])
    assert not torch.equal(a.batch(7)[0], a.batch(8)[0])
    resumed = iter(TrainWindows(path, 16, 4, seed=1, start=5))
    fresh = iter(TrainWindows(path, 16, 4, seed=1))
    for _ in range(5):
        next(fresh)
    for _ in range(3):
        assert torch.equal(next(resumed)[0], next(fresh)[0])
    x, y = a.batch(0)
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])  # targets are the next tokens


def test_validation_windows_tile_the_split_without_overlap(tmp_path):
    path = tmp_path / "v.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    n = ValWindows.count(1000, 64)
    windows = ValWindows(path, 64, np.arange(n))
    targets = torch.cat([windows[i][1] for i in range(len(windows))])
    assert n == 15 and torch.equal(targets, torch.arange(1, n * 64 + 1))


def test_sequence_longer_than_the_data_is_a_config_error(corpus_files, tmp_path):
    dm = text_data([str(p) for p in corpus_files], seq_len=100_000, batch_size=2, seed=0, tokenizer="byte",
                   cache_dir=str(tmp_path / "cache"))
    dm.prepare_data()
    with pytest.raises(ConfigError, match=r"^seq_len=100000: longer than the data allows; the train split has"):
        dm.setup()


def test_datamodule_serves_fixed_validation_subset(corpus_files, tmp_path):
    dm = TokenDataModule(TextFiles([str(p) for p in corpus_files]), tokenizer="byte", seq_len=16, batch_size=2,
                         seed=0, cache_dir=str(tmp_path / "cache"), val_windows=3, final_val_windows=None)
    dm.prepare_data()
    dm.setup()
    subset = [b[0] for b in dm.val_dataloader()]
    again = [b[0] for b in dm.val_dataloader()]
    assert all(torch.equal(a, b) for a, b in zip(subset, again))
    assert sum(len(b) for b in subset) == 3
    assert len(dm.final_val_dataloader().dataset) == ValWindows.count(dm.meta["tokens"]["val"], 16)
