"""LightningDataModule over a prepared token directory.

Training reads random windows whose positions are a pure function of (seed, optimiser step): the
global batch of step n is the same whatever the number of devices and micro-batches it is split
into, every architecture trained with the same seed and batch size sees the same batches in the same
order, and a resumed run continues exactly where the interrupted one stopped. Each device (rank r of
R) trains its slice of the global batch. Validation reads fixed, non-overlapping windows (window w
predicts tokens w·T+1 … w·T+T of the split), every R-th one per rank, so the ranks together read each
window once.
"""

from __future__ import annotations

import functools
import json
import logging
import mmap
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from denselab.config import ConfigError
from denselab.data.corpus import PythonStdlib, TextFiles
from denselab.data.hub import HubDataset
from denselab.data.prepare import prepare_bpe, prepare_tokens, prepared_dir

log = logging.getLogger(__name__)


def _open_tokens(path: Path) -> np.memmap:
    return np.memmap(path, dtype=np.uint16, mode="r")


class TrainWindows(IterableDataset):
    """Endless micro-batches of `batch_size` random windows of `seq_len + 1` tokens, for one rank.

    Optimiser step n draws its global batch of B = batch_size · accumulate · world_size windows at
    `default_rng([seed, n]).integers(0, N - seq_len, B)`, in the order (micro-batch a, rank r, window);
    micro-batch a of step n on rank r is the slice [(a·world_size + r)·batch_size, … + batch_size).
    With one device and no accumulation, micro-batch n is step n's whole batch.

    Reading: the bin is mapped with readahead off (MADV_RANDOM) — a window spans one or two pages, and
    the kernel's readahead would otherwise read megabytes around each one (8 MB per window on the
    reference VM) — and every window of a micro-batch is requested at once (MADV_WILLNEED) before the
    copy, so a micro-batch of windows not yet in the page cache costs about one disk read, not one per
    window (benchmarks/README.md: 64 ms → 0.46 ms for 16 cold windows on the reference VM).
    """

    def __init__(self, path: Path, seq_len: int, batch_size: int, seed: int, start: int = 0, accumulate: int = 1,
                 rank: int = 0, world_size: int = 1):
        self.path, self.seq_len, self.batch_size, self.seed, self.start = path, seq_len, batch_size, seed, start
        self.accumulate, self.rank, self.world_size = accumulate, rank, world_size
        self._map: mmap.mmap | None = None
        self._tokens: np.ndarray | None = None

    def _open(self) -> None:
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if hasattr(self._map, "madvise"):  # not on Windows
            self._map.madvise(mmap.MADV_RANDOM)
        self._tokens = np.frombuffer(self._map, dtype=np.uint16)

    def _request(self, starts: np.ndarray) -> None:
        """Ask the kernel for the pages of every window now, so their reads overlap."""
        if not hasattr(self._map, "madvise"):
            return
        itemsize, page = self._tokens.itemsize, mmap.PAGESIZE
        for start in starts.tolist():
            first = start * itemsize // page * page
            self._map.madvise(mmap.MADV_WILLNEED, first, (start + self.seq_len + 1) * itemsize - first)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Micro-batch n of this rank: inputs and next-token targets, (batch_size, seq_len) each."""
        if self._tokens is None:  # opened lazily: a mapping does not travel to worker processes
            self._open()
        tokens = self._tokens
        step, micro = divmod(n, self.accumulate)
        global_batch = self.batch_size * self.accumulate * self.world_size
        first = (micro * self.world_size + self.rank) * self.batch_size
        starts = np.random.default_rng([self.seed, step]).integers(0, len(tokens) - self.seq_len, global_batch)
        starts = starts[first : first + self.batch_size]
        self._request(starts)
        windows = tokens[starts[:, None] + np.arange(self.seq_len + 1)].astype(np.int64)  # (B, T + 1)
        windows = torch.from_numpy(windows)
        return windows[:, :-1], windows[:, 1:]  # inputs, next-token targets

    def __iter__(self):
        n = self.start
        while True:
            yield self.batch(n)
            n += 1


class ValWindows(Dataset):
    """Non-overlapping windows of a split: item w is (tokens[wT : wT+T], tokens[wT+1 : wT+T+1])."""

    def __init__(self, path: Path, seq_len: int, window_ids: np.ndarray):
        self.path, self.seq_len, self.window_ids = path, seq_len, window_ids
        self._tokens: np.memmap | None = None

    @staticmethod
    def count(n_tokens: int, seq_len: int) -> int:
        return (n_tokens - 1) // seq_len

    def __len__(self) -> int:
        return len(self.window_ids)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self._tokens is None:
            self._tokens = _open_tokens(self.path)
        start = int(self.window_ids[item]) * self.seq_len
        window = torch.from_numpy(self._tokens[start : start + self.seq_len + 1].astype(np.int64))
        return window[:-1], window[1:]


class TokenDataModule(L.LightningDataModule):
    """Tokenizes `source` once (see `prepare.py`) and serves training and validation windows.

    Args:
        source: a corpus object (`corpus.PythonStdlib`, `corpus.TextFiles`, `hub.HubDataset`).
        tokenizer: 'byte' or 'gpt2'.
        seq_len, batch_size: window length T and windows per micro-batch on one device (the global
            batch of a step is batch_size × accumulation × devices, conf/data/_tokens.yaml).
        seed: the data-order seed (the run's seed).
        cache_dir: where prepared directories live.
        num_proc: tokenization worker processes (`datasets.map`).
        val_windows: windows per periodic validation, evenly spaced over the split (None: all).
        final_val_windows: windows of the final evaluation (None: the whole split).
        eval_batch_size: windows per validation batch (None: batch_size).
        verify_bins: how a prepared directory is checked before reuse: "size", "full" (SHA-256 of
            the bins) or "auto" (full up to 1 GiB of bins); see `prepare.invalid_reason`.
    """

    def __init__(
        self,
        source,
        tokenizer: str,
        seq_len: int,
        batch_size: int,
        seed: int,
        cache_dir: str,
        num_proc: int = 1,
        val_windows: int | None = 64,
        final_val_windows: int | None = None,
        eval_batch_size: int | None = None,
        verify_bins: str = "auto",
        bpe_vocab_size: int = 2048,
    ):
        super().__init__()
        self.source, self.tokenizer = source, tokenizer
        self.bpe_vocab_size = bpe_vocab_size
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.cache_dir, self.num_proc = cache_dir, num_proc
        self.val_windows, self.final_val_windows = val_windows, final_val_windows
        self.eval_batch_size = eval_batch_size or batch_size
        self.verify_bins = verify_bins
        self.meta: dict | None = None
        self._prepared = False

    @functools.cached_property
    def tokenizer_spec(self) -> str:
        """'byte', 'gpt2' or 'bpe:<path>' (the BPE is trained here on first use: see tokenizers.py)."""
        if self.tokenizer == "bpe":
            return prepare_bpe(self.source, self.bpe_vocab_size, self.cache_dir, self.num_proc)
        return self.tokenizer

    @property
    def directory(self) -> Path:
        return prepared_dir(self.source, self.tokenizer_spec, self.cache_dir)

    def prepare_data(self) -> None:
        if not self._prepared:  # train.py prepares before building the model; Lightning asks again
            prepare_tokens(self.source, self.tokenizer_spec, self.cache_dir, self.num_proc, self.verify_bins)
            self._prepared = True

    def setup(self, stage: str | None = None) -> None:
        if self.meta is not None:
            return
        self.meta = json.loads((self.directory / "meta.json").read_text())
        for split in ("train", "val"):
            n = self.meta["tokens"][split]
            if self.seq_len + 1 > n:
                raise ConfigError(
                    f"seq_len={self.seq_len}: longer than the data allows; the {split} split has {n:,} tokens "
                    f"(allowed: seq_len <= {n - 1:,})"
                )

    @property
    def vocab_size(self) -> int:
        assert self.meta is not None, "call prepare_data() and setup() first"
        return self.meta["vocab_size"]

    def _micro_batches_done(self) -> int:
        trainer = self.trainer
        return trainer.global_step * trainer.accumulate_grad_batches if trainer is not None else 0

    def _rank(self) -> tuple[int, int]:
        """(this process's rank, number of ranks): (0, 1) outside a Trainer or on one device."""
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        start = self._micro_batches_done()  # the checkpoint is restored before this is called
        if start:
            log.info("Resuming the data stream at micro-batch %d", start)
        rank, world_size = self._rank()
        accumulate = self.trainer.accumulate_grad_batches if self.trainer is not None else 1
        windows = TrainWindows(self.directory / "train.bin", self.seq_len, self.batch_size, self.seed, start,
                               accumulate=accumulate, rank=rank, world_size=world_size)
        return DataLoader(windows, batch_size=None)

    def val_windows_loader(self, limit: int | None) -> DataLoader:
        """Fixed non-overlapping validation windows: all of them, or `limit` evenly spaced ones; on R
        ranks, every R-th of them (no padding: the token-weighted mean over ranks is the one-device one)."""
        total = ValWindows.count(self.meta["tokens"]["val"], self.seq_len)
        if limit is None or limit >= total:
            ids = np.arange(total)
        else:  # a fixed, evenly spaced subset: the same windows at every validation
            ids = np.linspace(0, total - 1, num=limit).round().astype(np.int64)
        rank, world_size = self._rank()
        return DataLoader(ValWindows(self.directory / "val.bin", self.seq_len, ids[rank::world_size]),
                          batch_size=self.eval_batch_size)

    def total_val_windows(self) -> int:
        return ValWindows.count(self.meta["tokens"]["val"], self.seq_len)

    def final_val_windows_count(self) -> int:
        """Windows of the final evaluation over all ranks."""
        total = self.total_val_windows()
        return total if self.final_val_windows is None else min(self.final_val_windows, total)

    def val_dataloader(self) -> DataLoader:
        return self.val_windows_loader(self.val_windows)

    def final_val_dataloader(self) -> DataLoader:
        return self.val_windows_loader(self.final_val_windows)


def stdlib_data(val_percent: int = 5, **settings: Any) -> TokenDataModule:
    """`data=stdlib`: the embedded Python-standard-library corpus (see `corpus.PythonStdlib`)."""
    return TokenDataModule(PythonStdlib(val_percent=val_percent), **settings)


def text_data(
    paths: list[str],
    val_paths: list[str] | None = None,
    val_fraction: float = 0.05,
    text_field: str = "text",
    **settings: Any,
) -> TokenDataModule:
    """`data=text data.paths=[...]`: your own .txt/.jsonl/.parquet files (see `corpus.TextFiles`)."""
    source = TextFiles(list(paths), list(val_paths or []), val_fraction, text_field,
                       cache_dir=str(Path(settings["cache_dir"]) / "hf_datasets"))
    return TokenDataModule(source, **settings)


def hub_data(
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
    data_files: Any = None,
    **settings: Any,
) -> TokenDataModule:
    """`data=owt2|pg19|wikitext103`: a hub dataset at a pinned revision, or local files in its layout
    (`data.data_files`); see `hub.HubDataset`."""
    source = HubDataset(name, dataset_id, revision, config_name, text_field, documents, val_split, val_fraction,
                        split_seed, expected_rows, streaming, data_files,
                        cache_dir=str(Path(settings["cache_dir"]) / "hf_datasets"))
    return TokenDataModule(source, **settings)
