"""Prepare a corpus's token cache without training (what `make data-owt2` and friends run):

    python -m denselab.data data=owt2                        # download, split, tokenize into data/owt2-gpt2/
    python -m denselab.data data=owt2 data.num_proc=32       # tokenizer processes (default: all cores)
    python -m denselab.data data=owt2 data.streaming=true    # no raw copy on disk (own dir: data/owt2-stream-gpt2)
    python -m denselab.data data=owt2 data.verify_bins=full  # re-hash the bins of a prepared directory

Arguments are the same `key=value` overrides as run.py's, composed from the repository's conf/ (run it
from the repository root, or set DENSELAB_ROOT). A prepared directory that matches is reused, so a
second call only checks it. Exit status 2 with one line on stderr for a setting that cannot work.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from denselab.config import ConfigError, check_group_choices, register_resolvers, validate_config


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return 0
    flags = [a for a in argv if a.startswith("-")]
    if flags:
        print(f"error: {flags[0]}: arguments are key=value overrides (python -m denselab.data --help)", file=sys.stderr)
        return 2
    root = Path(os.environ.get("DENSELAB_ROOT") or Path.cwd()).resolve()
    conf_dir = root / "conf"
    if not (conf_dir / "config.yaml").is_file():
        print(f"error: {conf_dir}/config.yaml not found: run from the repository root or set DENSELAB_ROOT",
              file=sys.stderr)
        return 2
    os.environ["DENSELAB_ROOT"] = str(root)  # paths.root_dir: data/ lands in the repository
    check_group_choices(argv, conf_dir)
    register_resolvers()
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")

    from hydra import compose, initialize_config_dir

    from denselab.data import instantiate_datamodule

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=argv)
    try:
        validate_config(cfg, argv)
        datamodule = instantiate_datamodule(cfg.data)
        datamodule.prepare_data()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = json.loads((datamodule.directory / "meta.json").read_text())
    tokens, documents = meta["tokens"], meta["documents"]
    print(f"[denselab] {datamodule.directory} is ready: {tokens['train']:,} train / {tokens['val']:,} val tokens "
          f"({documents['train']:,} / {documents['val']:,} documents, {meta['tokenizer']}); train with "
          f"the same data settings, e.g. run.py {' '.join(argv)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
