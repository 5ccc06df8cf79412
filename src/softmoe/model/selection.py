"""Expert subsets (docs/study.md §4): Algorithm 1, the random baseline and the exhaustive oracle."""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch

from softmoe.base.errors import UserError

ORACLE_ELEMENTS = 1 << 24  # floats materialized per chunk of the oracle search


def expert_scores(combine: torch.Tensor, slots_per_expert: int = 1) -> torch.Tensor:
    """Combine weight of each expert summed over tokens and its slots: (b, m, n*p) -> (b, n)."""
    b, m, s = combine.shape
    if s % slots_per_expert:
        raise ValueError(f"combine has {s} slots, not a multiple of slots_per_expert={slots_per_expert}")
    return combine.reshape(b, m, s // slots_per_expert, slots_per_expert).sum(dim=(1, 3))


def _check_k(k: int, n: int) -> None:
    if not 1 <= k <= n:
        raise ValueError(f"k must be in 1..{n} (the number of experts), got {k}")


def select_experts(combine: torch.Tensor, k: int, slots_per_expert: int = 1) -> torch.Tensor:
    """Algorithm 1: the k experts with the LARGEST scores, (b, k) long, best first.

    Ties go to the lower expert index (stable sort), so the choice is deterministic.
    """
    scores = expert_scores(combine, slots_per_expert)                    # (b, n)
    _check_k(k, scores.shape[1])
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def random_experts(batch: int, n: int, k: int, seed: int) -> torch.Tensor:
    """Uniform random k-subset of the n experts per input, (batch, k) long.

    The draw: a CPU torch.Generator seeded with `seed` fills a (batch, n) matrix with
    torch.rand; row i's argsort is input i's random permutation and its first k entries are
    the subset. Different k therefore share the permutation (the subsets are nested). Draw once
    for a whole test set: the rows depend on the batch size only through their position.
    """
    _check_k(k, n)
    generator = torch.Generator().manual_seed(seed)
    permutations = torch.rand(batch, n, generator=generator).argsort(dim=1)
    return permutations[:, :k]


@dataclass
class OracleResult:
    """Per input: `correct` (some k-subset predicts the label), `best` (index into `subsets`
    of the subset with the largest true-class margin, first in lexicographic order on ties),
    `margin` (that margin: true logit minus the largest other logit); `distinct` counts the
    different best subsets over all inputs."""
    subsets: torch.Tensor   # (comb(n, k), k) long, lexicographic order
    correct: torch.Tensor   # (b,) bool
    best: torch.Tensor      # (b,) long
    margin: torch.Tensor    # (b,) float
    distinct: int


def oracle_subsets(contributions: torch.Tensor, labels: torch.Tensor, k: int, limit: int,
                   mass: torch.Tensor | None = None) -> OracleResult:
    """Exhaustive search over every k-subset S of the n experts, using the labels.

    contributions: (b, n, classes), logits(S) = sum over j in S of contributions[:, j]; or
    (b, n, m, classes) per token, logits(S) = sum over tokens t of
    sum_{j in S} contributions[:, j, t] / (sum_{j in S} mass[:, t, j] if mass is given else 1),
    i.e. with `mass` (b, m, n) the combine weights are renormalized over the kept experts.
    An input counts as correct when argmax(logits(S)) == label (ties go to the lower class,
    as torch.argmax does) for some S. Raises UserError when comb(n, k) > limit.
    """
    if contributions.dim() == 3:
        if mass is not None:
            raise ValueError("mass (renormalization) needs per-token contributions (b, n, m, classes)")
        contributions = contributions.unsqueeze(2)                       # (b, n, 1, classes)
    b, n, m, classes = contributions.shape
    _check_k(k, n)
    total = math.comb(n, k)
    if total > limit:
        raise UserError(f"oracle over comb({n}, {k}) = {total} subsets exceeds evaluate.oracle_limit "
                        f"= {limit}; raise 'evaluate.oracle_limit' or lower 'evaluate.oracle_fraction'")
    if mass is None:
        contributions = contributions.sum(dim=2, keepdim=True)           # no renormalization: m = 1
        m = 1
    per_expert = contributions.transpose(1, 2).contiguous()              # (b, m, n, classes)
    subsets = torch.tensor(list(itertools.combinations(range(n), k)), dtype=torch.long)
    member = torch.zeros(total, n, dtype=contributions.dtype).scatter(1, subsets, 1.0)  # (S, n)
    chunk = max(1, ORACLE_ELEMENTS // max(1, b * m * classes))
    margins, right = [], []
    for start in range(0, total, chunk):
        rows = member[start:start + chunk]                               # (c, n)
        logits = rows @ per_expert                                       # (b, m, c, classes)
        if mass is not None:
            logits = logits / (mass @ rows.t()).unsqueeze(-1)            # kept mass per token
        margin, hit = _margin(logits.sum(dim=1), labels)                 # (b, c) each
        margins.append(margin)
        right.append(hit.any(dim=1))
    best_margin, best = torch.cat(margins, dim=1).max(dim=1)            # first maximum on ties
    correct = torch.stack(right).any(dim=0)
    return OracleResult(subsets, correct, best, best_margin, int(best.unique().numel()))


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, c, classes) -> true-class margin (b, c) and whether argmax == label (b, c)."""
    idx = labels.view(-1, 1, 1).expand(-1, logits.shape[1], 1)
    true = logits.gather(2, idx).squeeze(2)                              # (b, c)
    rival = logits.scatter(2, idx, float("-inf")).amax(dim=2)            # (b, c)
    return true - rival, logits.argmax(dim=2) == labels.view(-1, 1)
