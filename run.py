#!/usr/bin/env python
"""Train one model, or sweep many with -m (Hydra):

    python run.py                                   # the main job: 12-block DenseFormer, ~5 min on CPU
    python run.py model=transformer steps=200
    python run.py -m model=denseformer dilation=1,2,4
    python run.py --help                            # every group and option
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ.setdefault("DENSELAB_ROOT", str(ROOT))

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from denselab.config import check_group_choices, register_resolvers  # noqa: E402

register_resolvers()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from denselab.train import train

    train(cfg)


if __name__ == "__main__":
    check_group_choices(sys.argv[1:], ROOT / "conf")
    main()
