"""Algorithm 1, the random baseline and the oracle."""
import itertools

import pytest
import torch

import softmoe.model.selection as selection
from softmoe.base.errors import UserError
from softmoe.model.models import MnistSoftMoE
from softmoe.model.selection import expert_scores, oracle_subsets, random_experts, select_experts


def test_expert_scores_sum_tokens_and_slots():
    combine = torch.arange(24, dtype=torch.float64).view(1, 2, 12)   # m=2 tokens, n=4 experts, p=3
    scores = expert_scores(combine, slots_per_expert=3)
    want = [sum(combine[0, t, j * 3 + q].item() for t in range(2) for q in range(3)) for j in range(4)]
    assert scores.tolist() == [want]
    with pytest.raises(ValueError, match="multiple"):
        expert_scores(combine, slots_per_expert=5)


def test_select_experts_is_brute_force_best_subset():
    torch.manual_seed(0)
    combine = torch.rand(20, 3, 6 * 2).softmax(dim=2)
    scores = expert_scores(combine, 2)
    for k in range(1, 7):
        chosen = select_experts(combine, k, slots_per_expert=2)
        assert chosen.shape == (20, k) and chosen.dtype == torch.long
        for i in range(20):
            best = max(itertools.combinations(range(6), k), key=lambda s: scores[i, list(s)].sum().item())
            assert sorted(chosen[i].tolist()) == sorted(best)


def test_select_experts_keeps_largest_not_smallest():
    """The paper's pseudo-code sorts ascending; Algorithm 1 keeps the largest scores."""
    combine = torch.tensor([[[0.1, 0.6, 0.3], [0.2, 0.5, 0.3]]])        # scores 0.3, 1.1, 0.6
    assert select_experts(combine, 1).tolist() == [[1]]
    assert select_experts(combine, 2).tolist() == [[1, 2]]
    assert torch.argsort(expert_scores(combine))[:, :2].tolist() == [[0, 2]]   # the bug's choice


def test_select_experts_ties_go_to_lower_index():
    combine = torch.full((2, 3, 5), 0.2)
    assert select_experts(combine, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    with pytest.raises(ValueError, match="k must be"):
        select_experts(combine, 6)


def test_random_experts_draw():
    a = random_experts(1000, 8, 3, seed=4)
    assert a.shape == (1000, 3) and a.dtype == torch.long
    assert ((a >= 0) & (a < 8)).all()
    assert all(len(set(row)) == 3 for row in a.tolist())
    assert torch.equal(a, random_experts(1000, 8, 3, seed=4))
    assert not torch.equal(a, random_experts(1000, 8, 3, seed=5))
    # documented draw: the first k of a per-input permutation, shared by every k
    permutation = torch.rand(1000, 8, generator=torch.Generator().manual_seed(4)).argsort(dim=1)
    assert torch.equal(a, permutation[:, :3])
    assert torch.equal(random_experts(1000, 8, 5, seed=4)[:, :3], a)
    counts = torch.bincount(a.flatten(), minlength=8).float()
    assert (counts - 375).abs().max() < 75                               # 3000 draws over 8 experts


def test_oracle_by_hand():
    """n=4 experts, k=2: six subsets {01, 02, 03, 12, 13, 23}, three classes."""
    contributions = torch.tensor([
        # input 0, label 2: {2, 3} -> [0, 1, 5] margin 4 is best; {0, 3} -> [2, 0, 3] is also
        # right (margin 1); {0, 2} -> [2, 1, 2] and {1, 3} -> [0, 3, 3] tie and argmax is wrong
        [[2.0, 0, 0], [0, 3, 0], [0, 1, 2], [0, 0, 3]],
        # input 1, label 0: {0, 1} -> [4, 1, 0] margin 3, {0, 2} -> [3, 0, 0] margin 3 (tie:
        # first subset wins), {0, 3} -> [2, 0, 2] margin 0, others leave class 0 at 0 or 1
        [[2.0, 0, 0], [2, 1, 0], [1, 0, 0], [0, 0, 2]],
        # input 2, label 1: class 0 always wins, every subset has margin -8: the first is best
        [[5.0, 1, 0], [5, 1, 0], [5, 1, 0], [5, 1, 0]],
    ])
    result = oracle_subsets(contributions, torch.tensor([2, 0, 1]), k=2, limit=10)
    assert result.subsets.tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert result.correct.tolist() == [True, True, False]
    assert result.best.tolist() == [5, 0, 0]
    assert result.margin.tolist() == [4.0, 3.0, -8.0]
    assert result.distinct == 2


def test_oracle_ties_follow_argmax():
    """A tie with a lower class is wrong (argmax picks the lower class), with a higher class right."""
    contributions = torch.tensor([[[1.0, 1.0]], [[1.0, 1.0]]])          # n=1, both classes tie
    result = oracle_subsets(contributions, torch.tensor([1, 0]), k=1, limit=1)
    assert result.correct.tolist() == [False, True]


def test_oracle_limit_is_a_user_error():
    with pytest.raises(UserError, match="evaluate.oracle_limit"):
        oracle_subsets(torch.zeros(1, 16, 3), torch.tensor([0]), k=8, limit=5000)


@pytest.mark.parametrize("renormalize", [False, True])
def test_oracle_matches_forward_brute_force(renormalize, monkeypatch):
    monkeypatch.setattr(selection, "ORACLE_ELEMENTS", 500)                # force many chunks
    torch.manual_seed(0)
    model = MnistSoftMoE(6).double()
    images = torch.rand(40, 1, 28, 28, dtype=torch.float64)
    labels = torch.randint(0, 10, (40,))
    with torch.no_grad():
        contributions, mass = model.logit_contributions(images)
        result = oracle_subsets(contributions, labels, k=2, limit=100,
                                mass=mass if renormalize else None)
        if not renormalize:
            summed = oracle_subsets(contributions.sum(dim=2), labels, k=2, limit=100)
            assert torch.equal(summed.best, result.best) and torch.equal(summed.correct, result.correct)
        margins, hits = [], []
        for subset in result.subsets:
            logits = model(images, keep=subset.repeat(40, 1), renormalize=renormalize)
            true = logits.gather(1, labels[:, None]).squeeze(1)
            margins.append(true - logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1))
            hits.append(logits.argmax(dim=1) == labels)
    margins, hits = torch.stack(margins, dim=1), torch.stack(hits, dim=1)
    assert torch.equal(result.correct, hits.any(dim=1))
    torch.testing.assert_close(result.margin, margins.max(dim=1).values)
    torch.testing.assert_close(margins.gather(1, result.best[:, None]).squeeze(1), result.margin)
    assert 0 < result.correct.sum() < 40
