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
from omegaconf import OmegaConf  # noqa: E402

from denselab.config import ConfigError, check_group_choices  # noqa: E402
from denselab.config.validation import check_renamed_keys, config_groups_help  # noqa: E402
from denselab.ranks import child_argv  # noqa: E402
from denselab.task import task  # noqa: E402

# --help lists the groups' options without the private ones (conf/hydra/default.yaml, hydra.help).
OmegaConf.register_new_resolver("denselab.config_groups", lambda: config_groups_help(ROOT / "conf"), replace=True)
main = hydra.main(version_base="1.3", config_path=str(ROOT / "conf"), config_name="config")(task)

if __name__ == "__main__":
    sys.argv = child_argv(sys.argv)  # a process Lightning started for another device runs rank 0's job
    check_group_choices(sys.argv[1:], ROOT / "conf")
    try:
        check_renamed_keys(sys.argv[1:])
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    main()
