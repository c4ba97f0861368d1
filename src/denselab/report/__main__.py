"""python -m denselab.report experiment=<name> [scale=mini] [the other overrides the sweep was run with]
python -m denselab.report --readmes      # regenerate every experiments/<name>/README.md (and the index below)
python -m denselab.report --claims       # the claims scoreboard: experiments/claims.csv and experiments/README.md"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from denselab.config import ConfigError, register_resolvers

ROOT = Path(__file__).resolve().parents[3]


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    if argv == ["--readmes"]:  # regenerate experiments/<name>/README.md for every experiment
        from denselab.report.build import write_readme

        from denselab.report.build import write_index

        for path in sorted((ROOT / "conf" / "experiment").glob("[!_]*.yaml")):
            print(f"[denselab] wrote {write_readme(path.stem, ROOT / 'experiments' / path.stem)}")
        print(f"[denselab] wrote {write_index(ROOT / 'experiments')}")
        return 0
    if argv == ["--claims"]:  # experiments/README.md's scoreboard and experiments/claims.csv, from the committed CSVs
        from denselab.report.build import write_index

        print(f"[denselab] wrote {write_index(ROOT / 'experiments')} and {ROOT / 'experiments' / 'claims.csv'}")
        return 0
    if not any(a.startswith("experiment=") for a in argv):
        print("usage: python -m denselab.report experiment=<name> [scale=smoke|mini|paper] [overrides ...]",
              file=sys.stderr)
        return 2
    os.environ.setdefault("DENSELAB_ROOT", str(ROOT))
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("config", overrides=argv, return_hydra_config=True)
    from denselab.checkpoints import CheckpointError
    from denselab.report import report_experiment

    try:
        written = report_experiment(cfg, argv)
    except (ConfigError, CheckpointError, FileNotFoundError) as e:  # a damaged or foreign last.ckpt: one line
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(f"[denselab] wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
