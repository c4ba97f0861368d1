"""The DWA benchmark: its two baselines compute the same DWA as ours, and a quick run writes one CSV
row per variant with ratios to the Transformer."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from denselab.models import DWA, GPT
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from dwa_bench import paired_ratios  # noqa: E402
from paper_listings import NaiveDWA, PaperA2DWA  # noqa: E402


@pytest.mark.parametrize("baseline", [NaiveDWA, PaperA2DWA])
@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (12, 4, 5), (12, 2, 1), (12, 12, 1)])
def test_paper_listings_compute_the_same_dwa_as_ours(baseline, depth, k, p):
    torch.manual_seed(0)
    ours = DWA(depth, k, p)
    model = GPT(64, depth, 16, 2, 8, mixer=ours)
    with torch.no_grad():
        for a in ours.alphas:
            a.add_(0.3 * torch.randn_like(a))
    other = baseline(depth, k, p)
    other.load_state_dict(ours.state_dict(), strict=False)
    x0 = torch.randn(2, 8, 16, requires_grad=True)
    results = []
    for mixer in (ours, other):
        y = mixer(x0, model.blocks, model.rotary)
        results.append((y, *torch.autograd.grad(y.square().mean(), [x0, *mixer.alphas])))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # α gradients are sums over B·T·C terms


def test_quick_benchmark_writes_every_variant_with_ratios(tmp_path):
    cmd = [sys.executable, "benchmarks/dwa_bench.py", "--quick", "--threads", "1",
           "--patterns", "1x1", "4x5",
           "--sections", "dwa", "memory", "decode", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    rows = pd.read_csv(tmp_path / "dwa.csv")
    for (depth, mode), group in rows.groupby(["depth", "mode"]):
        assert set(group.variant) == {"transformer", "keep_outputs", "naive", "paper_a2", "ours"}
        assert group[group.variant == "transformer"].ratio.tolist() == [1.0]
        assert group[group.variant == "transformer"][["ratio_q1", "ratio_q3"]].values.tolist() == [[1.0, 1.0]]
    assert ((rows.ratio_q1 <= rows.ratio_paired) & (rows.ratio_paired <= rows.ratio_q3)).all()
    assert set(rows["mode"]) == {"infer", "train"} and (rows.median_ms > 0).all()
    ours = rows[rows.variant == "ours"]
    assert ours.speedup_vs_paper_a2.notna().all()
    # implementation="auto": the fast scheme for 1x1, the reference loop for 4x5 (few reads per output)
    assert set(ours[ours.pattern == "1x1"].implementation) == {"fast"}
    assert set(ours[ours.pattern == "4x5"].implementation) == {"reference"}
    fast = ours[ours.implementation == "fast"]
    assert (fast.traffic_tensors > 0).all() and ours[ours.implementation == "reference"].traffic_tensors.isna().all()
    assert "dwa_speedup_vs_paper_a2" in ours  # the DWA's own added time, next to the whole trunk's
    decode = pd.read_csv(tmp_path / "decode.csv")
    assert list(decode.model) == ["transformer", "denseformer 1x1", "denseformer 4x5"]
    assert (decode.tokens_per_s > 0).all() and "-- ours at depth 12 --" in proc.stdout
    assert "goal" not in proc.stdout.lower()  # the goals of a past issue are not the benchmark's
    memory = pd.read_csv(tmp_path / "memory.csv")
    assert len(memory) == 2 + 2 * 3 and memory.peak_extra_mb.notna().all()
    assert memory.allocated_peak_extra_mb.notna().all() and (memory.allocated_peak_extra_mb > 0).all()
    machine = json.loads((tmp_path / "machine.json").read_text())
    assert machine["dwa"]["malloc"].startswith("steady") and "allocator: steady" in proc.stdout


def test_paired_ratios_are_the_quartiles_and_median_of_the_per_repetition_ratios():
    # repetition r of the variant ran next to repetition r of the base: ratios 1.0, 1.1, 1.2, 1.3, 1.4
    base = [1.0, 2.0, 1.0, 2.0, 1.0]
    times = [1.0, 2.2, 1.2, 2.6, 1.4]
    q1, median, q3 = paired_ratios(times, base)
    assert (q1, median, q3) == pytest.approx((1.1, 1.2, 1.3))  # the ratio of the medians would be 1.4


@pytest.mark.slow
def test_compile_section_counts_the_graph_breaks_of_the_traced_fast_scheme(tmp_path):
    cmd = [sys.executable, "benchmarks/dwa_bench.py", "--quick", "--threads", "1", "--sections", "compile",
           "--out", str(tmp_path)]
    subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900, check=True)
    rows = pd.read_csv(tmp_path / "compile.csv").set_index("model")
    # what the product compiles: one graph per model, the DWA as its readable loop
    for model in ["transformer", "denseformer 1x1", "denseformer 4x5"]:
        assert (rows.loc[model, "graphs"], rows.loc[model, "graph_breaks"]) == (1, 0)
        assert rows.loc[model, "compiled_ms"] > 0
    # the fast scheme, were it traced: Dynamo cuts the graph and says why
    traced = rows.loc["denseformer fast-scheme-traced 1x1"]
    assert traced.graph_breaks > 0 and traced.graphs > 1 and isinstance(traced.break_reasons, str)


def test_overhead_script_prints_the_cost_per_block_of_both_implementations():
    cmd = [sys.executable, "benchmarks/dwa_overhead.py", "--depth", "6", "--patterns", "2x1", "--reps", "2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    lines = [line for line in out.splitlines() if line.strip().startswith("2x1")]
    assert [line.split()[1] for line in lines] == ["infer", "train"]
    for line in lines:  # "... per block: ours +  41.3 us (g=6), reference +  86.5 us"
        ours, reference = (float(part.split("+")[1].split("us")[0]) for part in line.split("per block:")[1].split(","))
        assert abs(ours) < 1e5 and abs(reference) < 1e5  # microseconds, parsed (timing itself is not asserted)


def test_ab_script_times_an_earlier_commits_dwa_against_the_working_trees():
    cmd = [sys.executable, "benchmarks/dwa_ab.py", "--old", "HEAD", "--depth", "4", "--width", "64",
           "--reps", "2", "--patterns", "1x1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    ratios = {}
    for line in out.splitlines():  # "  1x1 new / old: x1.004 [0.993, 1.024]"
        if line.strip().startswith("1x1"):
            name, figures = line.strip()[4:].split(":")
            ratios[name] = float(figures.split()[0].lstrip("x"))
    assert set(ratios) == {"old", "new", "new / old"}
    assert all(r > 0 for r in ratios.values())


def test_ab_script_times_decoding_too():
    cmd = [sys.executable, "benchmarks/dwa_ab.py", "--old", "HEAD", "--decode", "2", "--depth", "4", "--width", "64",
           "--reps", "2", "--patterns", "1x1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    assert "KV-cached decoding" in out and "1x1 new / old: x" in out


def test_memory_by_block_script_reports_what_is_kept_between_steps_and_every_block():
    cmd = [sys.executable, "benchmarks/dwa_memory_by_block.py", "--width", "64", "--depth", "4", "--blocks", "2"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    kept = next(line for line in out.splitlines() if line.startswith("kept between steps"))
    assert float(kept.split(":")[1]) == 0.0  # the fast scheme's buffers live and die with a step's graph
    blocks = [int(line.split("block")[1].split(":")[0]) for line in out.splitlines() if "backward of block" in line]
    assert blocks == [4, 3, 2, 1]


def test_time_split_timer_sees_the_dwa_sums_of_a_training_step_through_the_public_seam():
    from dwa_time_split import BACKWARD_SUMS, FORWARD_SUMS, SumTimer

    from denselab.models.dwa_fast import Pass

    originals = {name: getattr(Pass, name) for name in FORWARD_SUMS + BACKWARD_SUMS}
    mixer = DWA(6, 1, 1, implementation="fast")
    timer = SumTimer()
    mixer.fast.pass_type = timer.pass_type
    model = GPT(64, 6, 16, 2, 8, mixer=mixer)
    x0 = torch.randn(2, 8, 16, requires_grad=True)
    mixer(x0, model.blocks, model.rotary).square().mean().backward()
    taken = timer.take()
    assert timer.take()["backward"] == 0.0  # `take` starts over
    assert all(taken[name] > 0 for name in ("average", "store_grad", "grad_output"))
    assert taken["forward"] == taken["average"]
    assert taken["backward"] == taken["store_grad"] + taken["grad_output"] + taken["alpha_grads"]
    assert all(getattr(Pass, name) is original for name, original in originals.items())  # nothing patched


def test_time_split_noop_sums_leave_the_transformer():
    """With the sums as no-ops ours computes the Transformer's function (Y_i = X_i) and gradients
    whatever its α, and gets zero α gradients: the timing of everything of ours but the sums."""
    from dwa_time_split import NoopPass

    from denselab.models import Residual

    torch.manual_seed(0)
    mixer = DWA(6, 1, 1, implementation="fast")
    model = GPT(64, 6, 16, 2, 8, mixer=mixer)
    with torch.no_grad():
        for alpha in mixer.alphas:
            alpha.uniform_(0.5, 1.5)  # far from the identity: a real DWA changes the output
    x0 = torch.randn(2, 8, 16)
    x_transformer = x0.clone().requires_grad_()
    transformer = Residual(6)(x_transformer, model.blocks, model.rotary)
    transformer.square().mean().backward()
    transformer = transformer.detach()
    mixer.fast.pass_type = NoopPass
    x = x0.clone().requires_grad_()
    y = mixer(x, model.blocks, model.rotary)
    y.square().mean().backward()
    torch.testing.assert_close(y, transformer)
    assert all(torch.equal(alpha.grad, torch.zeros_like(alpha)) for alpha in mixer.alphas)
    torch.testing.assert_close(x.grad, x_transformer.grad)
    other = DWA(6, 1, 1, implementation="fast")  # another DWA keeps the real sums
    other.load_state_dict(mixer.state_dict())
    assert not torch.allclose(other(x0, model.blocks, model.rotary), transformer)


def test_time_split_script_sets_the_dwa_sums_against_the_schemes_traffic_and_a_target():
    cmd = [sys.executable, "benchmarks/dwa_time_split.py", "--width", "64", "--depth", "6", "--reps", "2",
           "--patterns", "1x1", "--target", "1.06"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True).stdout
    lines = {line.strip().split(" ")[0] + " " + line.strip().split(" ")[2]: line for line in out.splitlines()
             if "DWA sums" in line}
    plan = DWA(6, 1, 1).fast.plan
    g = plan.group_size(4 * 256 * 64, train=True, device_type="cpu")  # the trunk's batch at width 64: 4 x 256 tokens
    forward = int(lines["DWA forward"].split("bound")[1].split()[0])
    backward = int(lines["DWA backward"].split("bound")[1].split()[0])
    assert (forward, forward + backward) == (plan.traffic(g), plan.traffic(g, train=True))
    assert "store_grad" in lines["DWA backward"] and "grad_output" in lines["DWA backward"]
    assert "target x1.06: a budget of" in out and "rest (autograd nodes" in out
    assert "nodes" in out.split("rest (autograd nodes")[1] and "ours with no-op sums" in out


def test_league_speed_times_every_league_node_side_by_side_against_the_transformer(tmp_path):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from denselab.config import register_resolvers
    from denselab.report.league import row_name

    cmd = [sys.executable, "benchmarks/league_speed.py", "--scale", "smoke", "--rounds", "2", "--repeats", "1",
           "--threads", "1", "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    register_resolvers()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        league = compose("config", overrides=["experiment=league", "scale=smoke"], return_hydra_config=True)
    names = [row_name(row) for row in OmegaConf.to_container(league.hydra.sweeper.rows)]
    table = pd.read_csv(tmp_path / "speed.csv")
    assert table["row"].tolist() == names and (table["rounds"] == 2).all()
    assert table.iloc[0][["train_ratio", "inference_ratio"]].tolist() == [1.0, 1.0]  # the Transformer
    for ratio in ("train_ratio", "inference_ratio"):
        assert (table[f"{ratio}_q1"] <= table[ratio]).all() and (table[ratio] <= table[f"{ratio}_q3"]).all()
        assert (table[ratio] > 0).all()
    assert table.set_index("model").loc["mudd", "params"] > table.set_index("model").loc["transformer", "params"]
    info = json.loads((tmp_path / "speed.json").read_text())
    assert info["threads"] == 1 and info["rounds"] == 2 and info["commit"] and "league_speed.py" in info["command"]
    assert "MUDDFormer" in proc.stdout and "inference speed vs Transformer" in proc.stdout

