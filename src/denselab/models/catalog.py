"""The table of architecture nodes in the README, computed from conf/model/*.yaml.

    python -m denselab.models.catalog            # markdown table at the paper's size (48 x 768, 12 heads)

Each row: the node (`model=<name>`), what it does (the YAML's header comment) and its parameters at
depth 48, width 768, GPT-2 vocabulary, counted on the meta device (no memory used).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hydra import compose, initialize_config_dir

from denselab.config import register_resolvers
from denselab.models import build_model, count_parameters

CONF = Path(__file__).resolve().parents[3] / "conf"
PAPER_SIZE = {"depth": 48, "width": 768, "heads": 12, "vocab_size": 50304}


def node_names(conf_dir: Path = CONF) -> list[str]:
    """Every `model=` option, the Transformer and DenseFormer first."""
    names = sorted(p.stem for p in (conf_dir / "model").glob("*.yaml"))
    first = [n for n in ("transformer", "denseformer") if n in names]
    return first + [n for n in names if n not in first]


def description(name: str, conf_dir: Path = CONF) -> str:
    """The first paragraph of the header comment of conf/model/<name>.yaml, as one line."""
    lines = []
    for line in (conf_dir / "model" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#") or line.strip() == "#":
            break
        lines.append(line.lstrip("# ").strip())
    return " ".join(lines)


def parameter_rows(depth: int = 48, width: int = 768, heads: int = 12, vocab_size: int = 50304,
                   conf_dir: Path = CONF) -> list[dict]:
    register_resolvers()
    rows = []
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        for name in node_names(conf_dir):
            cfg = compose("config", overrides=[f"model={name}", f"depth={depth}", f"width={width}", f"heads={heads}"])
            counts = count_parameters(build_model(cfg.model, vocab_size, device="meta"))
            rows.append({"model": name, "extra": counts["mixing"], "total": counts["total"],
                         "description": description(name, conf_dir)})
    return rows


def markdown_table(rows: list[dict]) -> str:
    out = ["| `model=` | what it is (from its YAML) | extra parameters | total |", "| --- | --- | ---: | ---: |"]
    out += [f"| `{r['model']}` | {r['description']} | {r['extra']:,} | {r['total']:,} |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m denselab.models.catalog", description=__doc__.split("\n\n")[0])
    for key, value in PAPER_SIZE.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=value)
    args = parser.parse_args(argv)
    print(markdown_table(parameter_rows(args.depth, args.width, args.heads, args.vocab_size)))


if __name__ == "__main__":
    main()
