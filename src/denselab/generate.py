"""Sample text from a trained checkpoint, token by token with a KV cache.

    python -m denselab.generate ckpt=logs/runs/default/checkpoints/last.ckpt prompt="def main(" \\
        max_new_tokens=200 temperature=0.8 top_k=200 seed=0

Arguments are key=value: `ckpt` (required), `prompt` (default a newline), `max_new_tokens` (100),
`temperature` (0.8; 0 = greedy), `top_k` (200; null = the whole vocabulary), `seed` (0),
`cache` (true; false recomputes the full forward pass for every token, the slow reference),
`device` (cpu).

The checkpoint holds the resolved run config (`denselab_config`), from which the model and the
tokenizer are rebuilt, and the weights under `state_dict` with the prefix `net.`. It is read with
weights_only=True (denselab.checkpoints): a file that would need the full unpickler, which runs any
code a crafted file names, is refused, as are damaged files, each in one line (exit status 2).

Decoding: the prompt goes through the model once (prefill), then every new token alone. Attention
reads the keys and values cached by `GPT.kv_caching`; the depth mixing runs on the new token only,
because every node here mixes depth per token — for DWA that is the store of the current token's
block outputs, the DWA buffer of a one-token forward pass, so a DWA costs O(depth · width) per
token. The logits equal those of the full forward pass (tests/test_generate.py). When the context
reaches the model's `max_seq_len`, the cache is rebuilt from the last half of the context.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf

from denselab import checkpoints
from denselab.checkpoints import CheckpointError
from denselab.data.tokenizers import BpeTokenizer, get_tokenizer
from denselab.models import GPT, build_model, padded_vocab_size

DEFAULTS: dict[str, Any] = {"ckpt": None, "prompt": "\n", "max_new_tokens": 100, "temperature": 0.8, "top_k": 200,
                            "seed": 0, "cache": True, "device": "cpu"}


class UsageError(ValueError):
    """A bad command line, reported in one line."""


def parse_args(argv: list[str]) -> dict[str, Any]:
    """key=value arguments over DEFAULTS, values parsed as YAML scalars (prompt stays a string)."""
    args = dict(DEFAULTS)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in DEFAULTS:
            raise UsageError(f"{arg}: expected key=value with key one of {', '.join(DEFAULTS)}")
        args[key] = value if key in ("prompt", "ckpt") else yaml.safe_load(value) if value else None
    if not args["ckpt"]:
        raise UsageError("ckpt=<path/to/last.ckpt> is required")
    if not isinstance(args["max_new_tokens"], int) or args["max_new_tokens"] < 0:
        raise UsageError(f"max_new_tokens={args['max_new_tokens']!r}: allowed integers >= 0")
    if not isinstance(args["temperature"], (int, float)) or args["temperature"] < 0:
        raise UsageError(f"temperature={args['temperature']!r}: allowed numbers >= 0")
    if args["top_k"] is not None and (not isinstance(args["top_k"], int) or args["top_k"] < 1):
        raise UsageError(f"top_k={args['top_k']!r}: allowed null or integers >= 1")
    return args


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[GPT, Any, dict]:
    """The model (eval mode), its tokenizer and the run config stored in a checkpoint of run.py.

    Raises CheckpointError for a file that is damaged, is not a checkpoint of run.py, or holds objects
    other than tensors and plain containers (never unpickled: weights_only=True)."""
    checkpoint = checkpoints.load_checkpoint(path, map_location=device)
    config = checkpoint.get("denselab_config")
    if not config or "state_dict" not in checkpoint:
        raise CheckpointError(f"{path}: no denselab_config / state_dict in this checkpoint (not written by run.py?)")
    if config["data"]["tokenizer"] == "bpe":  # trained on the run's data, stored in its checkpoints
        if "denselab_tokenizer_json" not in checkpoint:
            raise CheckpointError(f"{path}: data.tokenizer=bpe but the checkpoint holds no tokenizer")
        tokenizer = BpeTokenizer(json_text=checkpoint["denselab_tokenizer_json"])
    else:
        tokenizer = get_tokenizer(config["data"]["tokenizer"])
    model_cfg = OmegaConf.create(config["model"])
    model = build_model(model_cfg, padded_vocab_size(tokenizer.vocab_size, model_cfg.vocab_multiple), device)
    weights = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    model.load_state_dict(weights)
    return model.eval(), tokenizer, config


def sample_next(logits: torch.Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> torch.Tensor:
    """Next token ids (B, 1) from the last position's logits (B, V)."""
    if temperature == 0:
        return logits.argmax(-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits.float(), dim=-1), 1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.8, top_k: int | None = 200,
             generator: torch.Generator | None = None, cache: bool = True, vocab_size: int | None = None) -> torch.Tensor:
    """idx (B, T) followed by max_new_tokens sampled tokens. `vocab_size` keeps the padding rows of the
    embedding out of the sample."""
    generator = generator or torch.Generator(device=idx.device).manual_seed(0)
    limit = model.max_seq_len

    def next_token(logits: torch.Tensor) -> torch.Tensor:
        return sample_next(logits[:, -1, :vocab_size], temperature, top_k, generator)

    if not cache:
        for _ in range(max_new_tokens):
            idx = torch.cat([idx, next_token(model(idx[:, -limit:]))], dim=1)
        return idx
    while max_new_tokens > 0:  # one cache per window of at most max_seq_len positions
        context = idx if idx.size(1) < limit else idx[:, -max(1, limit // 2):]
        with model.kv_caching(idx.size(0)) as caches:
            logits = model(context)  # prefill
            while True:
                token = next_token(logits)
                idx = torch.cat([idx, token], dim=1)
                max_new_tokens -= 1
                if max_new_tokens == 0 or caches[0].length == limit:
                    break
                logits = model(token)
    return idx


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__.strip())
        return
    try:
        args = parse_args(argv)
        if not Path(args["ckpt"]).is_file():
            raise UsageError(f"ckpt={args['ckpt']}: no such file")
        model, tokenizer, config = load_checkpoint(args["ckpt"], args["device"])
    except (UsageError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    prompt = tokenizer.encode(str(args["prompt"])) or [tokenizer.eot_token]
    idx = torch.tensor([prompt], dtype=torch.long, device=args["device"])
    generator = torch.Generator(device=args["device"]).manual_seed(int(args["seed"]))
    out = generate(model, idx, args["max_new_tokens"], float(args["temperature"]), args["top_k"], generator,
                   cache=bool(args["cache"]), vocab_size=tokenizer.vocab_size)
    print(tokenizer.decode(out[0].tolist()))


if __name__ == "__main__":
    main()
