"""The fast DWA (the default implementation) computes the paper's formula: same values and gradients
as the formula written out naively, buffers in the activation dtype, block outputs written straight
into them, and no more memory kept for the backward than one output per DWA step."""

from __future__ import annotations

import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from denselab.models import DWA, GPT, ConnectToLast, LastK, Residual
from denselab.models.dwa_fast import Plan
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from memory import peak_allocated_bytes  # noqa: E402


def FastDWA(*args, **kwargs) -> DWA:
    """The fast scheme whatever `implementation="auto"` would pick for the pattern."""
    return DWA(*args, implementation="fast", **kwargs)


WIDTH, HEADS, SEQ, BATCH = 16, 2, 8, 2


def perturbed(mixer: DWA, scale: float = 0.3) -> DWA:
    """α away from the identity, so that every source contributes."""
    torch.manual_seed(1)
    with torch.no_grad():
        for a in mixer.alphas:
            a.add_(scale * torch.randn_like(a))
    return mixer


def naive_sources(kind: str, depth: int, i: int, k: int = 1, p: int = 1) -> list[int]:
    """S_i written out from each pattern's definition (not from `DWA.sources`)."""
    if kind == "paper":
        return [j for j in range(i + 1) if j % k == i % k]
    if kind == "official":
        return [j for j in range(i + 1) if j % (k * p) == i % (k * p)]
    if kind == "last_k":
        return [0] + [j for j in range(1, i + 1) if j > i - k]
    if kind == "connect_to_last":
        return list(range(i + 1))
    raise ValueError(kind)


def naive_mixer(x0, blocks, rotary, alphas: dict[int, torch.Tensor], sources: dict[int, list[int]]):
    """Y_i = Σ_{j ∈ S_i} α_{i,j} X_j after the blocks i in `alphas`, else Y_i = X_i;  X_i = B_i(Y_{i-1})."""
    xs, y = [x0], x0
    for i, block in enumerate(blocks, start=1):
        xs.append(block(y, rotary))
        y = sum(a * xs[j] for a, j in zip(alphas[i], sources[i])) if i in alphas else xs[i]
    return y


def compare_with_naive(mixer: DWA, sources: dict[int, list[int]], dtype=torch.float32, group: int | None = None,
                       batch: int = BATCH, seq: int = SEQ):
    """Values and gradients (x0, α, every block parameter) of `mixer` against `naive_mixer`."""
    torch.manual_seed(0)
    depth = mixer.depth
    model = GPT(64, depth, WIDTH, HEADS, seq, mixer=perturbed(mixer)).to(dtype)
    if mixer.fast is not None:
        mixer.fast.group = group
    x0 = torch.randn(batch, seq, WIDTH, dtype=dtype, requires_grad=True)
    weight = torch.randn(batch, seq, WIDTH, dtype=dtype)
    params = [x0, *mixer.alphas, *model.blocks.parameters()]

    fast = mixer(x0, model.blocks, model.rotary)
    fast_grads = torch.autograd.grad((fast * weight).mean(), params)  # O(1) gradients: 1e-5 is a tight bound
    alphas = {i: mixer.alpha(i) for i in mixer.dwa_depths}
    ref = naive_mixer(x0, model.blocks, model.rotary, alphas, sources)
    ref_grads = torch.autograd.grad((ref * weight).mean(), params)
    return fast, ref, fast_grads, ref_grads


CASES = [(48, 1, 1), (48, 4, 5), (12, 4, 4), (12, 12, 1), (12, 2, 3), (7, 3, 2), (48, 4, 1), (48, 2, 1)]


@pytest.mark.parametrize("semantics", ["paper", "official"])
@pytest.mark.parametrize("depth,k,p", CASES)
def test_fast_dwa_equals_the_naive_formula_in_fp32(depth, k, p, semantics):
    mixer = FastDWA(depth, k, p, semantics)
    assert mixer.uses_fast_path
    sources = {i: naive_sources(semantics, depth, i, k, p) for i in range(p, depth + 1, p)}
    fast, ref, fast_grads, ref_grads = compare_with_naive(mixer, sources)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("group", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("depth,k,p", [(48, 1, 1), (48, 4, 5), (13, 2, 1)])
def test_every_group_size_of_the_blocked_scheme_is_exact(depth, k, p, group):
    sources = {i: naive_sources("paper", depth, i, k, p) for i in range(p, depth + 1, p)}
    fast, ref, fast_grads, ref_grads = compare_with_naive(FastDWA(depth, k, p), sources, dtype=torch.float64, group=group)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (12, 4, 1)])
def test_alpha_gradients_are_exact_when_summed_over_column_chunks(depth, k, p):
    # 3 x 1,100 tokens x 16 = 52,800 numbers per output: 12 chunks of 4,096 and a tail (`dwa_fast.row_dots`)
    sources = {i: naive_sources("paper", depth, i, k, p) for i in range(p, depth + 1, p)}
    fast, ref, fast_grads, ref_grads = compare_with_naive(FastDWA(depth, k, p), sources, dtype=torch.float64,
                                                          batch=3, seq=1100)
    assert 3 * 1100 * WIDTH % 4096 != 0 and 3 * 1100 * WIDTH // 4096 >= 2
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-12)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-12)


def test_connect_to_last_can_use_the_fast_path_and_is_exact():
    assert not ConnectToLast(12).uses_fast_path  # auto: each output is read by one DWA only
    mixer = ConnectToLast(12, implementation="fast")
    assert mixer.uses_fast_path
    fast, ref, fast_grads, ref_grads = compare_with_naive(mixer, {12: naive_sources("connect_to_last", 12, 12)})
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-5)


def test_last_k_is_not_a_prefix_pattern_and_runs_the_reference_exactly():
    mixer = LastK(12, k=4)
    assert Plan.build(12, mixer.dwa_depths, mixer.sources) is None and not mixer.uses_fast_path
    sources = {i: naive_sources("last_k", 12, i, k=4) for i in range(1, 13)}
    fast, ref, fast_grads, ref_grads = compare_with_naive(mixer, sources)
    torch.testing.assert_close(fast, ref, rtol=0, atol=1e-5)
    for g_fast, g_ref in zip(fast_grads, ref_grads):
        torch.testing.assert_close(g_fast, g_ref, rtol=0, atol=1e-5)


def test_auto_is_the_default_and_both_implementations_stay_available():
    assert DWA(4).implementation == "auto" and FastDWA(4).uses_fast_path
    assert not DWA(4, implementation="reference").uses_fast_path
    with pytest.raises(ValueError, match="implementation='slow'"):
        DWA(4, implementation="slow")


def test_auto_runs_the_fast_scheme_where_outputs_are_read_by_many_dwas():
    # Reads per kept output (Σ|S_i| / kept outputs): 1x1 25.0, 4x1 6.6 → fast; 4x5 1.5, 12x1 2.5 → reference
    assert DWA(48).uses_fast_path and DWA(48, 4, 1).uses_fast_path and DWA(12).uses_fast_path
    assert not DWA(48, 4, 5).uses_fast_path and not DWA(48, 12, 1).uses_fast_path
    # 4x5: DWAs after blocks 5, 10, ..., 45 read 2, 3, 4, 6, 7, 8, 9, 11, 12 outputs, 40 distinct ones
    assert DWA(48, 4, 5).fast.plan.reads_per_kept_output == pytest.approx(62 / 40)


def test_lanes_are_the_residue_classes_of_the_dilation():
    assert [lane.slots for lane in FastDWA(8, 2, 1).fast.plan.lanes] == [(0, 2, 4, 6, 8), (1, 3, 5, 7)]
    # official semantics at p = 2: dilation over DWA steps, lanes mod k·p = 4, only outputs at DWA points
    assert [lane.slots for lane in FastDWA(8, 2, 2, "official").fast.plan.lanes] == [(0, 4, 8), (2, 6)]
    assert [lane.rows for lane in FastDWA(8, 2, 2, "official").fast.plan.lanes] == [(4, 8), (2, 6)]


def test_traffic_model_of_one_product_per_dwa_and_of_the_blocked_scheme():
    plan = FastDWA(48).fast.plan
    assert plan.traffic(group=1) == sum(i + 1 + 1 for i in range(1, 49))  # read S_i, write Y_i
    assert plan.traffic(group=6) < 0.35 * plan.traffic(group=1)


@pytest.mark.parametrize("precision", ["bf16-true", "bf16-autocast"])
def test_buffers_follow_the_activation_dtype(precision):
    torch.manual_seed(0)
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6, 2, 1)))
    reference = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=DWA(6, 2, 1, implementation="reference"))
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 64, (BATCH, SEQ))
    if precision == "bf16-true":
        model, reference = model.bfloat16(), reference.bfloat16()
        context, activations = torch.autocast("cpu", enabled=False), torch.bfloat16
    else:  # Lightning's bf16-mixed: the residual stream stays fp32, the linears run in bf16
        context, activations = torch.autocast("cpu", dtype=torch.bfloat16), torch.float32
    dwa_outputs = []  # Y_1 .. Y_5, the blocks' inputs after block 1: DWA outputs, rows of the products
    for block in model.blocks[1:]:
        block.ln_1.register_forward_pre_hook(lambda mod, args: dwa_outputs.append(args[0]))
    with context:
        out, ref = model(idx), reference(idx)
        out.float().square().mean().backward()
    assert {t.dtype for t in dwa_outputs} == {activations}
    torch.testing.assert_close(out.float(), ref.float(), rtol=0.05, atol=0.05)
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in model.mixer.alphas)


class CountCopies(TorchDispatchMode):
    """Counts copies (copy_ and clone) of tensors of a given shape."""

    def __init__(self, shape):
        super().__init__()
        self.shape, self.copies = tuple(shape), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.copy_.default, torch.ops.aten.clone.default) and tuple(args[0].shape) == self.shape:
            self.copies += 1
        return func(*args, **(kwargs or {}))


def test_block_outputs_are_written_straight_into_the_buffer():
    torch.manual_seed(0)
    model = GPT(64, 12, WIDTH, HEADS, SEQ, mixer=FastDWA(12, 2, 3))  # keeps X_0, X_1 (no DWA after block 1), ...
    idx = torch.randint(0, 64, (BATCH, SEQ))
    with CountCopies((BATCH, SEQ, WIDTH)) as counter, torch.no_grad():
        model(idx)
    assert counter.copies == 1  # X_0, the embedding; no block output is copied
    inputs = []  # a block after which no DWA runs reads its input from the buffer (Y_1 = X_1 here)
    handle = model.blocks[1].ln_1.register_forward_pre_hook(lambda mod, args: inputs.append(args[0]))
    with torch.no_grad():
        model(idx)
    handle.remove()
    plan = model.mixer.fast.plan
    lane_rows = plan.buffer_rows(plan.slot_of[1][0])  # X_1's lane: X_1, X_3, X_5, ...
    assert inputs[0].untyped_storage().nbytes() == lane_rows * inputs[0].numel() * inputs[0].element_size()


def saved_bytes(model: GPT, idx: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves for the backward of one forward pass."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx).sum()
    return sum(storages.values())


@pytest.mark.parametrize("semantics", ["paper", "official"])
@pytest.mark.parametrize("k,p", [(1, 1), (2, 1), (4, 1), (12, 1), (2, 3), (4, 5)])
def test_the_gradients_fit_into_the_dead_rows_of_the_kept_outputs(k, p, semantics):
    """G in X: the backward writes its R gradients G into rows of X no DWA reads any more, so a lane's
    buffer has no rows beyond its S kept outputs (depth 48)."""
    plan = FastDWA(48, k, p, semantics=semantics).fast.plan
    for n, lane in enumerate(plan.lanes):
        assert plan.buffer_rows(n) == len(lane.slots)
        if p == 1:  # G_t overwrites X_{t+1} in X_0's lane (X_0, block 1's input, never) and X_t elsewhere
            assert plan.grad_shift(n) == (1 if lane.slots[0] == 0 else 0)


@pytest.mark.parametrize("implementation", ["fast", "reference"])
@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (12, 4, 5), (12, 2, 3)])
def test_training_keeps_at_most_one_extra_output_per_dwa_step(depth, k, p, implementation):
    """What autograd keeps from the forward: one output per DWA step (the fast scheme's buffers are
    the kept outputs, into whose dead rows its backward writes G)."""
    torch.manual_seed(0)
    transformer = GPT(64, depth, WIDTH, HEADS, SEQ, mixer=Residual(depth))
    dwa = DWA(depth, k, p, implementation=implementation)
    denseformer = GPT(64, depth, WIDTH, HEADS, SEQ, mixer=dwa)
    idx = torch.randint(0, 64, (BATCH, SEQ))
    output_bytes = BATCH * SEQ * WIDTH * 4
    alpha_bytes = sum(a.numel() * 4 for a in dwa.alphas)
    extra = saved_bytes(denseformer, idx) - saved_bytes(transformer, idx)
    assert extra <= len(dwa.dwa_depths) * output_bytes + alpha_bytes


@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (24, 1, 1), (12, 2, 3), (24, 4, 1)])
def test_a_training_step_peaks_at_one_extra_output_per_dwa_step_and_two_in_flight(depth, k, p):
    """Peak tensor memory of a training step (allocated, as a GPU counts it) over the Transformer's,
    with blocked groups (g = 4): the kept outputs, into whose dead rows the backward writes its
    gradients G ("G in X"), and two (B, T, C) tensors in flight — no (R, N) gradient buffer beside X
    (~2 outputs per DWA step at 1x1) and no g rows of G or partial gradients at the peak (the
    backward's groups begin and end with a single row)."""
    torch.manual_seed(0)
    width, seq = 64, 64
    idx = torch.randint(0, 64, (BATCH, seq))

    def peak(model: GPT) -> int:
        def step():
            model(idx).square().mean().backward()
            model.zero_grad(set_to_none=True)

        step()
        return peak_allocated_bytes(step)

    transformer = peak(GPT(64, depth, width, HEADS, seq, mixer=Residual(depth)))
    dwa = FastDWA(depth, k, p)
    dwa.fast.group = 4
    extra = peak(GPT(64, depth, width, HEADS, seq, mixer=dwa)) - transformer
    output_bytes = BATCH * seq * width * 4
    assert extra <= (len(dwa.dwa_depths) + 2) * output_bytes


@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (24, 1, 1), (24, 4, 1)])
def test_a_backward_that_peaks_at_its_end_holds_only_the_lane_buffers(depth, k, p):
    """Where the weight gradients outweigh the activations (few tokens, wide blocks: the paper's
    width at batch 1 in the benchmark), a training step's peak is at the end of the backward, and
    the DWA adds only its lane buffers there: the output, which the caller holds, is a tensor of its
    own, not a view that keeps the other g - 1 rows of its group of partial sums alive (with the
    view: 3 outputs more at 1x1, 1 at 4x1, g = 4)."""
    torch.manual_seed(0)
    width, seq = 256, 4

    def peak(mixer: torch.nn.Module) -> int:
        model = GPT(64, depth, width, HEADS, seq, mixer=mixer)
        x0 = torch.randn(BATCH, seq, width, requires_grad=True)

        def step():
            y = model.mixer(x0, model.blocks, model.rotary)  # held through the backward, as a caller does
            y.backward(torch.ones_like(y))
            model.zero_grad(set_to_none=True)

        step()
        return peak_allocated_bytes(step)

    transformer = peak(Residual(depth))
    dwa = FastDWA(depth, k, p)
    dwa.fast.group = 4
    extra = peak(dwa) - transformer
    output_bytes = BATCH * seq * width * 4
    plan = dwa.fast.plan
    buffer_rows = sum(plan.buffer_rows(lane) for lane in range(len(plan.lanes)))
    assert extra <= (buffer_rows + 1) * output_bytes


@pytest.mark.parametrize("k", [1, 4])
def test_the_lowest_column_of_each_gradient_group_gets_a_tensor_of_its_own(k):
    """∂L/∂X_j for the columns of one group (g = 4) are rows of one (g, N) tensor Q, except the
    group's lowest column, the last one the backward reaches: its gradient has storage of its own,
    so Q is freed before that block's backward, which for X_1 is where the weight gradients make the
    peak (the paper's width at batch 1 in the benchmark)."""
    depth = 12
    dwa = FastDWA(depth, k, 1)
    dwa.fast.group = 4
    model = GPT(64, depth, WIDTH, HEADS, SEQ, mixer=dwa)
    own_storage = {}

    def watch(i: int):
        def hook(module, inputs, output):  # the gradient of X_i reaches block i through its MLP's output
            output.register_hook(lambda g: own_storage.__setitem__(
                i, g.untyped_storage().nbytes() == g.numel() * g.element_size()))
        return hook

    for i, block in enumerate(model.blocks, start=1):
        block.mlp.register_forward_hook(watch(i))
    model(torch.randint(0, 64, (BATCH, SEQ))).square().mean().backward()
    lowest = {lane.slots[grp.start] for lane in dwa.fast.plan.lanes
              for grp in Plan.groups(len(lane.slots), 4, from_top=True)} - {0}
    assert sorted(lowest) != list(range(1, depth + 1))  # some groups have several columns
    assert own_storage == {i: i in lowest for i in range(1, depth + 1)}


def test_backpropagating_a_fast_graph_twice_is_refused_with_a_clear_error():
    """After the backward the buffers hold gradients, so a second one (retain_graph) would be wrong."""
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6)))
    loss = model(torch.randint(0, 64, (BATCH, SEQ))).square().mean()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="implementation='reference'"):
        loss.backward()


def test_consecutive_steps_agree():
    torch.manual_seed(0)
    model = GPT(64, 12, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(12)))
    idx = torch.randint(0, 64, (BATCH, SEQ))
    grads = []
    for _ in range(3):
        model(idx).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    for g in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], g))


def test_nothing_of_a_training_step_is_kept_for_the_next():
    """The lane buffers, the partial sums (the Y_t) and the backward's partial gradients Q are
    allocated per step and freed with its graph (benchmarks/README.md, "Memory")."""
    model = GPT(64, 12, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(12)))
    model.mixer.fast.group = 3
    model(torch.randint(0, 64, (BATCH, SEQ))).square().mean().backward()
    assert not [v for v in vars(model.mixer.fast).values() if isinstance(v, torch.Tensor)]
    assert model.mixer.fast._alpha_cache is None  # training builds the α matrices anew every step


def test_a_buffer_still_in_use_is_not_overwritten():
    """A hook that keeps block inputs (views into the buffers: Y_1 = X_1 of the lane, Y_2 of a DWA's
    partial sums) keeps them valid through the next forward pass."""
    torch.manual_seed(0)
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6, 1, 2)))
    kept = []
    for block in model.blocks[1:3]:
        block.ln_1.register_forward_pre_hook(lambda mod, args: kept.append(args[0]))
    with torch.no_grad():
        model(torch.randint(0, 64, (BATCH, SEQ)))
        first = [t.clone() for t in kept]
        model(torch.randint(0, 64, (BATCH, SEQ)))
    assert all(torch.equal(a, b) for a, b in zip(kept[:2], first))


def test_training_after_validation_in_inference_mode_agrees():
    """Lightning validates under torch.inference_mode, whose tensors training cannot write to."""
    torch.manual_seed(0)
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6)))
    idx = torch.randint(0, 64, (BATCH, SEQ))
    with torch.inference_mode():
        validated = model(idx)
    trained = model(idx)
    trained.square().mean().backward()
    torch.testing.assert_close(trained.detach(), validated, rtol=0, atol=1e-6)
    with torch.inference_mode():
        torch.testing.assert_close(model(idx), validated, rtol=0, atol=1e-6)


def test_decoding_reuses_the_alpha_matrices_until_an_alpha_changes():
    torch.manual_seed(0)
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6))).eval()
    idx = torch.randint(0, 64, (1, 1))
    with torch.no_grad():
        first = model(idx)
        cached = model.mixer.fast._alpha_cache
        torch.testing.assert_close(model(idx), first, rtol=0, atol=0)
        assert model.mixer.fast._alpha_cache is cached
        model.mixer.alphas[2].mul_(2.0)  # in place, as an optimiser step or load_state_dict does
        changed = model(idx)
    reference = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=DWA(6, implementation="reference")).eval()
    reference.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, reference(idx), rtol=0, atol=1e-6)
    assert model.mixer.fast._alpha_cache is not cached and not torch.equal(changed, first)


def test_decoding_token_by_token_stays_exact():
    """KV-cached decoding runs the fast scheme on one token at a time."""
    torch.manual_seed(0)
    model = GPT(64, 8, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(8, 2, 1))).eval()
    reference = GPT(64, 8, WIDTH, HEADS, SEQ, mixer=DWA(8, 2, 1, implementation="reference")).eval()
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 64, (1, 5))
    assert model.mixer.uses_fast_path
    with torch.no_grad(), model.kv_caching(1), reference.kv_caching(1):
        for t in range(idx.size(1)):
            torch.testing.assert_close(model(idx[:, t: t + 1]), reference(idx[:, t: t + 1]), rtol=0, atol=1e-6)


def test_decoding_under_autocast_runs_the_blocks_in_bf16_and_the_sums_in_fp32():
    """Without autograd the fast scheme turns autocast off for its products only, so its output is
    the reference's under the same autocast."""
    torch.manual_seed(0)
    model = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=perturbed(FastDWA(6))).eval()
    reference = GPT(64, 6, WIDTH, HEADS, SEQ, mixer=DWA(6, implementation="reference")).eval()
    reference.load_state_dict(model.state_dict())
    idx = torch.randint(0, 64, (1, 1))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, ref = model(idx), reference(idx)
    assert model.mixer.uses_fast_path and model.mixer.fast._alpha_cache is not None  # the fast scheme ran
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
