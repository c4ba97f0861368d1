"""Paper-scale corpora (OpenWebText2, PG-19, WikiText-103) through the real preparation path.

The tests write small files in each hub dataset's own column layout and pass them as `data_files`:
the same `HubDataset`, `load_dataset` call (packaged builder instead of hub id), split, tokenizer and
bin writer as a hub download, only the source differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import subprocess
import sys
import time

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from denselab.config import ConfigError
from denselab.data import HubDataset, get_tokenizer
from denselab.data.hub import hub_unreachable_reason, official_split_rows, wikitext_articles
from denselab.data.prepare import prepare_tokens
from tests.conftest import REPO, TINY, run_cli

OWT2 = dict(name="owt2", dataset_id="vietgpt/the_pile_openwebtext2",  # as in conf/data/owt2.yaml
            revision="95270202e5635b381a2c960de426247ac9baaaca", val_fraction=0.0005, split_seed=2357)
N_OWT2 = 4000  # ceil(0.0005 · 4000) = 2 validation documents
WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def owt2_docs(n: int = N_OWT2) -> list[str]:
    rng = np.random.default_rng(0)
    return [f"Page {i}: " + " ".join(rng.choice(WORDS, size=20 + i % 40)) + "." for i in range(n)]


def write_owt2_parquet(tmp_path, docs: list[str]) -> list[str]:
    """Two shards with the mirror's columns: title, text, reddit_scores (list of int32)."""
    half = len(docs) // 2
    paths = []
    for k, part in enumerate((docs[:half], docs[half:])):
        table = pa.table({
            "title": [d[:12] for d in part],
            "text": part,
            "reddit_scores": pa.array([[3, 7]] * len(part), type=pa.list_(pa.int32())),
        })
        path = tmp_path / f"train-0000{k}-of-00002.parquet"
        pq.write_table(table, path)
        paths.append(str(path))
    return paths


def tokens_of(docs: list[str], tokenizer: str = "gpt2") -> list[int]:
    tok = get_tokenizer(tokenizer)
    return [t for d in docs for t in tok.encode(d) + [tok.eot_token]]


def read_bin(path) -> list[int]:
    return np.fromfile(path, dtype=np.uint16).tolist()


@pytest.fixture(scope="module")
def owt2_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("owt2")
    return write_owt2_parquet(tmp, owt2_docs())


def test_owt2_split_is_the_official_seeded_train_test_split(owt2_files, tmp_path):
    source = HubDataset(**OWT2, expected_rows=N_OWT2, data_files=owt2_files, cache_dir=str(tmp_path / "hf"))
    directory = prepare_tokens(source, "gpt2", tmp_path / "cache")

    # The official DenseFormer code: dataset["train"].train_test_split(0.0005, seed=2357), 'test' -> 'val'.
    docs = owt2_docs()
    official = datasets.Dataset.from_dict({"text": docs}).train_test_split(test_size=0.0005, seed=2357, shuffle=True)
    assert len(official["test"]) == 2
    assert read_bin(directory / "val.bin") == tokens_of(official["test"]["text"])
    assert read_bin(directory / "train.bin") == tokens_of(official["train"]["text"])
    train_rows, val_rows = official_split_rows(N_OWT2, 0.0005, 2357)
    assert [docs[i] for i in val_rows] == official["test"]["text"]
    assert [docs[i] for i in train_rows[:50]] == official["train"]["text"][:50]

    meta = json.loads((directory / "meta.json").read_text())
    src = meta["source"]
    assert src["dataset_id"] == OWT2["dataset_id"] and src["revision"] == OWT2["revision"]
    assert src["split_rule"].startswith("train_test_split(test_size=0.0005, seed=2357, shuffle=True)")
    assert src["text_field"] == "text" and src["expected_rows"] == N_OWT2
    assert [f["path"] for f in src["data_files"]["train"]] == owt2_files
    assert meta["tokenizer"] == "gpt2" and meta["eot_token"] == 50256
    assert set(meta["tokenizer_files_sha256"]) == {"vocab.bpe", "encoder.json"}
    assert meta["documents"] == {"train": N_OWT2 - 2, "val": 2}
    for split in ("train", "val"):
        data = (directory / f"{split}.bin").read_bytes()
        assert meta["tokens"][split] * 2 == len(data)
        assert meta["bin_sha256"][split] == hashlib.sha256(data).hexdigest()


def test_streaming_jsonl_takes_the_same_validation_documents_in_source_order(tmp_path):
    """OWT2 as the original release ships it (jsonl rows), read as a stream in two worker processes."""
    docs = owt2_docs()
    path = tmp_path / "owt2.jsonl"
    path.write_text("".join(json.dumps({"title": d[:12], "text": d, "reddit_scores": [1]}) + "\n" for d in docs))
    source = HubDataset(**OWT2, expected_rows=N_OWT2, streaming=True, data_files=[str(path)],
                        cache_dir=str(tmp_path / "hf"))
    directory = prepare_tokens(source, "gpt2", tmp_path / "cache", num_proc=2)
    assert directory.name.startswith("owt2-files-") and directory.name.endswith("-stream-gpt2")
    _, val_rows = official_split_rows(N_OWT2, 0.0005, 2357)
    in_val = set(val_rows.tolist())
    assert read_bin(directory / "val.bin") == tokens_of([docs[i] for i in sorted(in_val)])
    assert read_bin(directory / "train.bin") == tokens_of([d for i, d in enumerate(docs) if i not in in_val])
    assert "streaming" in json.loads((directory / "meta.json").read_text())["source"]["split_rule"]


def test_a_source_with_another_row_count_is_refused(owt2_files, tmp_path):
    source = HubDataset(**OWT2, expected_rows=17_103_059, data_files=owt2_files, cache_dir=str(tmp_path / "hf"))
    with pytest.raises(ConfigError, match=r"^data.expected_rows=17103059: found 4,000 rows in split 'train' of the"):
        prepare_tokens(source, "gpt2", tmp_path / "cache")
    assert not list((tmp_path / "cache").glob("*/*.bin")) and not list((tmp_path / "cache").glob("*/meta.json"))


def test_pg19_layout_uses_its_own_validation_split(tmp_path):
    books = {split: [f"THE BOOK OF {split.upper()} {i}\n\n" + "It was a dark night. " * (50 + 10 * i) for i in range(n)]
             for split, n in (("train", 6), ("validation", 2), ("test", 2))}
    files = {}
    for split, texts in books.items():
        path = tmp_path / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.table({
            "short_book_title": [t.split("\n")[0] for t in texts],
            "publication_date": pa.array([1900 + i for i in range(len(texts))], type=pa.int32()),
            "url": [f"http://www.gutenberg.org/ebooks/{i}" for i in range(len(texts))],
            "text": texts,
        }), path)
        files[split] = [str(path)]
    source = HubDataset("pg19", "emozilla/pg19", "c021754c8e01c5b1cc83a1f549c1f97fbbb756b8", val_split="validation",
                        expected_rows=6, data_files=files, cache_dir=str(tmp_path / "hf"))
    directory = prepare_tokens(source, "gpt2", tmp_path / "cache")
    assert read_bin(directory / "val.bin") == tokens_of(books["validation"])
    assert read_bin(directory / "train.bin") == tokens_of(books["train"])
    meta = json.loads((directory / "meta.json").read_text())
    assert meta["documents"] == {"train": 6, "val": 2}
    assert meta["source"]["split_rule"] == "the source's own splits: train='train', val='validation'"


WIKITEXT_ROWS = [
    "", " = Valkyria Chronicles III = \n", "", " Senjō no Valkyria 3 is a tactical role @-@ playing game . \n", "",
    " = = Gameplay = = \n", "", " The game is played in turns . \n", "",
    " = Tower Building of the Little Rock Arsenal = \n", "", " The building is a brick structure . \n", "",
    " = = = History = = = \n", " It was built in 1840 . \n",
]


def test_wikitext_rows_are_grouped_into_articles_as_stored():
    articles = list(wikitext_articles(WIKITEXT_ROWS))
    assert len(articles) == 2  # section headings (" = = x = = ") do not start a new article
    assert articles[0].startswith(" = Valkyria Chronicles III = \n Senj") and " = = Gameplay = = \n" in articles[0]
    assert articles[1].startswith(" = Tower Building") and articles[1].endswith(" It was built in 1840 . \n")
    assert "".join(articles) == "".join(WIKITEXT_ROWS)  # nothing lost or reordered


def test_wikitext_layout_gets_one_end_of_text_per_article(tmp_path):
    files = {}
    for split, copies in (("train", 3), ("validation", 1)):
        path = tmp_path / f"{split}-00000-of-00001.parquet"
        pq.write_table(pa.table({"text": WIKITEXT_ROWS * copies}), path)
        files[split] = [str(path)]
    source = HubDataset("wikitext103", "Salesforce/wikitext", "b08601e04326c79dfdd32d625aee71d232d685c3",
                        config_name="wikitext-103-raw-v1", documents="wikitext_articles", val_split="validation",
                        expected_rows=3 * len(WIKITEXT_ROWS), data_files=files, cache_dir=str(tmp_path / "hf"))
    directory = prepare_tokens(source, "gpt2", tmp_path / "cache")
    tok = get_tokenizer("gpt2")
    val = read_bin(directory / "val.bin")
    assert val.count(tok.eot_token) == 2 and val[-1] == tok.eot_token
    assert tok.decode([t for t in val if t != tok.eot_token]) == "".join(WIKITEXT_ROWS)
    assert json.loads((directory / "meta.json").read_text())["documents"] == {"train": 6, "val": 2}


def test_settings_that_cannot_work_are_one_line_config_errors(owt2_files):
    with pytest.raises(ConfigError, match=r"^data.val_split=None, data.val_fraction=None: allowed exactly one"):
        HubDataset("x", "a/b", "main")
    with pytest.raises(ConfigError, match=r"^data.expected_rows=None: data.streaming=true with data.val_fraction"):
        HubDataset(**OWT2, streaming=True)
    with pytest.raises(ConfigError, match=r"^data.documents='wikitext_articles': a seeded row split would cut"):
        HubDataset(**OWT2, documents="wikitext_articles")
    with pytest.raises(ConfigError, match=r"^data.data_files: .*missing.parquet does not exist"):
        HubDataset(**OWT2, data_files=["missing.parquet"])
    with pytest.raises(ConfigError, match=r"^data.text_field='body': not a column of the data files \(columns: \['ti"):
        list(HubDataset(**OWT2, text_field="body", data_files=owt2_files).batches())


# ---------------------------------------------------------------------------------------------
# Reuse, changed settings, corruption, interruption
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def prepared(owt2_files, tmp_path):
    def make(**changes):
        settings = dict(OWT2, expected_rows=N_OWT2, data_files=owt2_files, cache_dir=str(tmp_path / "hf"))
        return HubDataset(**{**settings, **changes})
    return make, prepare_tokens(make(), "gpt2", tmp_path / "cache"), tmp_path / "cache"


def test_prepared_data_is_reused_and_a_changed_revision_is_prepared_again(prepared, caplog):
    make, directory, cache = prepared
    stamp = (directory / "train.bin").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        assert prepare_tokens(make(), "gpt2", cache) == directory
    assert "Reusing" in caplog.text and (directory / "train.bin").stat().st_mtime_ns == stamp
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(make(revision="0" * 40), "gpt2", cache)
    old, new = OWT2["revision"], "0" * 40
    assert f"differs in 'source' (source.revision: prepared \"{old}\", asked \"{new}\")" in caplog.text
    assert json.loads((directory / "meta.json").read_text())["source"]["revision"] == "0" * 40


def test_corrupted_and_truncated_bins_are_detected_and_prepared_again(prepared, caplog):
    make, directory, cache = prepared
    good = (directory / "val.bin").read_bytes()
    flipped = bytearray(good)
    flipped[3] ^= 0xFF
    (directory / "val.bin").write_bytes(bytes(flipped))  # same size: only the checksum can tell
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(make(), "gpt2", cache, verify="size")
    assert "Reusing" in caplog.text  # "size" trusts sizes (what "auto" does beyond 1 GiB of bins)
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(make(), "gpt2", cache, verify="full")
    assert "val.bin does not match its SHA-256 in meta.json: corrupted" in caplog.text
    assert (directory / "val.bin").read_bytes() == good
    (directory / "train.bin").write_bytes((directory / "train.bin").read_bytes()[:-2])
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(make(), "gpt2", cache)
    assert "train.bin is missing or has the wrong size" in caplog.text and "truncated" in caplog.text


def test_an_interrupted_preparation_never_looks_valid_and_is_redone(prepared, caplog, monkeypatch):
    make, directory, cache = prepared
    good = {s: (directory / f"{s}.bin").read_bytes() for s in ("train", "val")}
    real_batches = HubDataset.batches

    def dies_midway(self, *args, **kwargs):
        for i, batch in enumerate(real_batches(self, *args, **kwargs)):
            if i == 5:
                raise KeyboardInterrupt  # Ctrl-C in the middle of the train split
            yield batch

    monkeypatch.setattr(HubDataset, "batches", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        prepare_tokens(make(revision="1" * 40), "gpt2", cache)
    assert not (directory / "meta.json").exists() and not list(directory.glob("*.tmp"))
    monkeypatch.undo()
    (directory / "train.bin.tmp").write_bytes(b"\0" * 10)  # what a SIGKILL mid-write leaves
    with caplog.at_level(logging.INFO, logger="denselab.data.prepare"):
        prepare_tokens(make(), "gpt2", cache)
    assert "no complete preparation found (an interrupted one left train.bin.tmp)" in caplog.text
    assert {s: (directory / f"{s}.bin").read_bytes() for s in ("train", "val")} == good
    assert not list(directory.glob("*.tmp"))


# ---------------------------------------------------------------------------------------------
# Offline: fail in seconds, say what to run where
# ---------------------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unprepared_hub_dataset_without_network_fails_in_seconds(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port()}")  # nothing listens there
    assert "did not answer within 3 s" in hub_unreachable_reason()
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        prepare_tokens(HubDataset(**OWT2, expected_rows=17_103_059), "gpt2", "data")
    assert time.perf_counter() - start < 10
    assert str(error.value).startswith(
        "data=owt2: not prepared in data/owt2-gpt2 and the Hugging Face hub is unreachable (http://127.0.0.1:")
    assert str(error.value).endswith(
        "run `make data-owt2` on a machine with internet access, then copy its owt2-gpt2/ into data/")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_unreachable_reason() == "HF_HUB_OFFLINE is set"


def test_training_on_an_unprepared_hub_dataset_offline_stops_with_one_line(tmp_path):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), "data=owt2", f"paths.log_dir={tmp_path / 'logs'}",
                           f"paths.data_dir={tmp_path / 'data'}"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=120)
    assert proc.returncode == 2 and time.perf_counter() - start < 60  # ~5 s, mostly imports
    assert proc.stderr.strip().splitlines() == [
        f"error: data=owt2: not prepared in {tmp_path / 'data' / 'owt2-gpt2'} and the Hugging Face hub is "
        "unreachable (HF_HUB_OFFLINE is set): run `make data-owt2` on a machine with internet access, then copy "
        f"its owt2-gpt2/ into {tmp_path / 'data'}/"]


# ---------------------------------------------------------------------------------------------
# End to end: prepare with the CLI, train with run.py
# ---------------------------------------------------------------------------------------------

def test_prepare_cli_then_a_few_training_steps_on_owt2_layout_files(owt2_files, tmp_path):
    data_args = ["data=owt2", f"data.data_files=[{','.join(owt2_files)}]", f"data.expected_rows={N_OWT2}"]
    env = dict(os.environ, DENSELAB_ROOT=str(REPO))
    prep = subprocess.run([sys.executable, "-m", "denselab.data", *data_args, "data.num_proc=1",
                           f"paths.data_dir={tmp_path / 'data'}"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-3000:]
    assert "is ready: " in prep.stdout and "(3,998 / 2 documents, gpt2)" in prep.stdout

    tiny = [*[a for a in TINY if not a.startswith("data.final_val_windows=")], "data.final_val_windows=null"]  # the whole split
    run_cli([*data_args, *tiny], tmp_path / "logs", tmp_path / "data")
    (metrics_path,) = (tmp_path / "logs").rglob("metrics.json")
    metrics = json.loads(metrics_path.read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 6
    assert metrics["vocab_size"] == 50304  # GPT-2's 50,257 padded to a multiple of 64
    assert metrics["hparams"]["data"] == "owt2" and metrics["hparams"]["tokenizer"] == "gpt2"
    assert metrics["data"]["source"]["dataset_id"] == OWT2["dataset_id"]
    val_tokens = metrics["data"]["tokens"]["val"]
    assert metrics["final_val_tokens"] == (val_tokens - 1) // 32 * 32 > 0  # non-overlapping windows of seq_len
