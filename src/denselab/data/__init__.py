"""Data: text sources (`corpus`), tokenizers, the token cache (`prepare`) and the LightningDataModule."""

from denselab.data.corpus import PythonStdlib, TextFiles
from denselab.data.datamodule import TokenDataModule, hub_data, stdlib_data, text_data
from denselab.data.hub import HubDataset
from denselab.data.tokenizers import get_tokenizer


def instantiate_datamodule(data_cfg) -> TokenDataModule:
    """The `data` config group's datamodule. A source that refuses its settings (no file matches
    `data.paths`, say) raises ConfigError inside Hydra's instantiate, which wraps it in a multi-line
    InstantiationException; the refusal's own line is what the user needs."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from denselab.config import ConfigError

    try:
        return instantiate(data_cfg)
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


__all__ = ["HubDataset", "PythonStdlib", "TextFiles", "TokenDataModule", "get_tokenizer", "hub_data",
           "instantiate_datamodule", "stdlib_data", "text_data"]
