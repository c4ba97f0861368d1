"""`compile=true`: the whole model goes through torch.compile (one graph, no break at the DWA steps)
and computes what the eager model computes."""

from __future__ import annotations

import pytest
import torch

from denselab.models import DWA, GPT
from tests.conftest import TINY, run_cli


def test_compiled_denseformer_equals_the_eager_one_in_one_graph():
    torch.manual_seed(0)
    model = GPT(64, 3, 32, 2, 16, mixer=DWA(3, 1, 1))
    with torch.no_grad():
        for a in model.mixer.alphas:
            a.add_(0.3 * torch.randn_like(a))
    idx = torch.randint(0, 64, (2, 16))
    eager_out = model(idx)
    eager_out.square().mean().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # aot_eager: Dynamo's capture and AOTAutograd's graphs, as compile=true traces them, without Inductor's
    # C++ code generation (a minute on 2 CPU cores); the slow test below trains through Inductor itself
    model.compile(backend="aot_eager")
    out = model(idx)
    out.square().mean().backward()
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]
    torch.testing.assert_close(out, eager_out, rtol=0, atol=1e-5)
    for p, g in zip(model.parameters(), eager_grads):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=1e-5)
    torch._dynamo.reset()


@pytest.mark.slow
def test_run_py_trains_with_compile_true(tmp_path, data_dir):
    proc = run_cli(["model=denseformer", "compile=true", *TINY], tmp_path, data_dir, timeout=900)
    assert "compile=true" in proc.stdout and "final validation: loss" in proc.stdout
