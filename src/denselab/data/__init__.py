"""Data: text sources (`corpus`), tokenizers, the token cache (`prepare`) and the LightningDataModule."""

from denselab.data.corpus import PythonStdlib, TextFiles
from denselab.data.datamodule import TokenDataModule, stdlib_data, text_data
from denselab.data.tokenizers import get_tokenizer

__all__ = ["PythonStdlib", "TextFiles", "TokenDataModule", "get_tokenizer", "stdlib_data", "text_data"]
