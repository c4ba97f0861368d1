"""The DWA module computes exactly the paper's formula (§3, §3.2, §3.3), values and gradients."""

from __future__ import annotations

import pytest
import torch

from denselab.models import DWA, GPT, num_dwa_parameters


def reference_forward(model: GPT, idx: torch.Tensor, alphas: dict[int, torch.Tensor], k: int, p: int) -> torch.Tensor:
    """The paper's definition, written out naively:
    Y_i = Σ_{j ≤ i, j ≡ i (mod k)} α_{i,j} X_j if p | i, else X_i;  X_i = B_i(Y_{i-1});  Y_0 = X_0."""
    xs = [model.wte(idx)]
    y = xs[0]
    for i, block in enumerate(model.blocks, start=1):
        xs.append(block(y, model.rotary))
        if i % p == 0:
            sources = [j for j in range(i + 1) if j % k == i % k]
            y = sum(alphas[i][n] * xs[j] for n, j in enumerate(sources))
        else:
            y = xs[i]
    return model.lm_head(model.ln_f(y))


@pytest.mark.parametrize("depth,k,p", [(48, 1, 1), (48, 4, 5), (12, 4, 4), (12, 12, 1), (12, 2, 3), (7, 3, 2)])
def test_dwa_matches_naive_formula_values_and_gradients(depth, k, p):
    torch.manual_seed(0)
    model = GPT(vocab_size=64, depth=depth, width=16, n_heads=2, max_seq_len=8, mixer=DWA(depth, k, p)).double()
    with torch.no_grad():  # move α away from the identity so every term matters
        for a in model.mixer.alphas:
            a.add_(0.3 * torch.randn_like(a))
    idx = torch.randint(0, 64, (2, 8))

    out = model(idx)
    out.square().mean().backward()
    grads = {n: p_.grad.clone() for n, p_ in model.named_parameters()}
    model.zero_grad()

    alphas = {i: model.mixer.alpha(i) for i in model.mixer.dwa_depths}
    ref = reference_forward(model, idx, alphas, k, p)
    ref.square().mean().backward()

    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    for name, param in model.named_parameters():
        torch.testing.assert_close(grads[name], param.grad, rtol=1e-9, atol=1e-12, msg=name)
    assert all(model.mixer.alphas[n].grad.abs().sum() > 0 for n in range(len(model.mixer.alphas)))


def test_dwa_gradient_reaches_the_embedding_directly():
    """With α_{i,0} ≠ 0 the last DWA reads X_0: the embedding gets gradient through the DWA path."""
    torch.manual_seed(0)
    x = [torch.randn(2, 3, 4, requires_grad=True) for _ in range(5)]  # X_0 .. X_4
    dwa = DWA(depth=4)
    with torch.no_grad():
        dwa.alpha(4).copy_(torch.tensor([0.5, 0.0, 0.0, 0.0, 1.0]))
    dwa.average(x, 4).sum().backward()
    torch.testing.assert_close(x[0].grad, torch.full_like(x[0], 0.5))
    torch.testing.assert_close(x[4].grad, torch.ones_like(x[4]))
    assert x[1].grad.abs().sum() == 0
    torch.testing.assert_close(dwa.alpha(4).grad, torch.stack([xi.sum() for xi in x]).detach())


@pytest.mark.parametrize("depth,k,p", [(12, 1, 1), (48, 1, 1), (48, 4, 1), (48, 4, 5), (12, 12, 1), (10, 3, 4)])
def test_dwa_parameter_count_is_sum_over_dwa_depths_of_sources(depth, k, p):
    dwa = DWA(depth, k, p)
    expected = sum(len([j for j in range(i + 1) if j % k == i % k]) for i in range(1, depth + 1) if i % p == 0)
    assert sum(a.numel() for a in dwa.alphas) == expected == num_dwa_parameters(depth, k, p)


def test_full_denseformer_adds_d_times_d_plus_3_over_2_alphas():
    for d in (1, 12, 48, 72):
        assert num_dwa_parameters(d) == d * (d + 3) // 2
    assert num_dwa_parameters(48) == 1224


def test_alpha_starts_as_identity():
    dwa = DWA(12, 2, 3)
    assert dwa.dwa_depths == [3, 6, 9, 12]
    for i in dwa.dwa_depths:
        a = dwa.alpha(i)
        assert list(dwa.sources(i)) == [j for j in range(i + 1) if j % 2 == i % 2]
        assert a[-1] == 1 and a[:-1].abs().sum() == 0
    m = dwa.alpha_matrix()
    torch.testing.assert_close(m, torch.eye(13))


def test_only_outputs_some_dwa_reads_are_kept():
    dwa = DWA(12, dilation=4, period=5)  # DWAs after blocks 5 and 10: sources {1, 5} and {2, 6, 10}
    assert {j for j in range(13) if dwa.is_needed(j)} == {1, 5, 2, 6, 10}
