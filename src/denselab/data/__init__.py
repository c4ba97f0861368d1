"""Data: text sources (`corpus`), tokenizers, the token cache (`prepare`) and the LightningDataModule."""

from denselab.data.corpus import PythonStdlib, TextFiles
from denselab.data.datamodule import TokenDataModule, hub_data, stdlib_data, text_data
from denselab.data.hub import HubDataset
from denselab.data.tokenizers import get_tokenizer

__all__ = ["HubDataset", "PythonStdlib", "TextFiles", "TokenDataModule", "get_tokenizer", "hub_data", "stdlib_data",
           "text_data"]
