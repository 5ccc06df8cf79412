"""Accuracy under expert selection (docs/study.md §5 E2, E3): Algorithm 1 against random k-subsets, all
experts and the label-aware oracle, for one trained model (headline metrics: softmoe.audit.summary).

Two exact paths compute the same numbers:
- fast (models with `logit_contributions`, i.e. one Soft MoE layer followed by a linear head):
  every expert runs once; logits(S) is a sum of per-expert, per-token contributions, so ordering
  the experts of each input (by Algorithm 1's score, or by a random permutation whose first k
  entries are a uniform k-subset) and taking cumulative sums gives every k at once;
- generic (any model whose forward takes `k` and `keep`): one forward pass per k, method, seed.

Rows are written for every renormalize mode of params (the "all" row, k = n, is the same
number in both, so that each mode is a complete curve). z = (accuracy_alg1 - mean_random) /
std_random (ddof=1) follows IEEE division: +-inf when the random accuracies do not vary but
Algorithm 1 differs from them, NaN when they are equal too.

`diff_sd` (Algorithm 1 rows only) is the sd over test images (ddof=1) of d_i = correct_alg1_i -
mean over random seeds of correct_random_i at the same k and mode: the test-sampling term of the
paired interval of Algorithm 1 minus random (softmoe.statistics.inference.paired_mean). Both paths
accumulate the sums of d_i and d_i² per k over batches, so it is exact.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable, Iterator

import pandas as pd
import torch

from softmoe.base import atomic
from softmoe.model import modelfile
from softmoe.base.errors import UserError
from softmoe.study.params import Dataset, Evaluate, Model, Train
from softmoe.model.selection import oracle_subsets, random_experts, select_experts
from softmoe.study.stats import k_for, z_score

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


# ---- one trained model ---------------------------------------------------------------------
def evaluate_run(evaluate: Evaluate, train: Train, model: Model, entry: Dataset, data_dir: Path,
                 run_dir: Path, out_csv: Path) -> None:
    """Write the tidy selection table of one trained run (docs/architecture.md) on the test split
    of the prepared data (checked against the dataset entry), under params.evaluate; train and
    model: the params sections the run was trained with (its inputs and its model)."""
    atomic.write_csv(out_csv, selection_rows(evaluate, train, model, entry, data_dir, run_dir))


def selection_rows(evaluate: Evaluate, train: Train, model: Model, entry: Dataset, data_dir: Path,
                   run_dir: Path) -> pd.DataFrame:
    """The selection rows of one trained run, with its dataset, n and seed."""
    net = modelfile.load_trained(run_dir, model, expect={"dataset": entry.name})
    meta = modelfile.run_metadata(run_dir)
    total, batches = _test_batches(evaluate.batch_size, train, model, entry, Path(data_dir))
    frame = selection_table(net, batches, total, evaluate)
    frame.insert(0, "seed", int(meta["seed"]))
    frame.insert(0, "n", int(meta["n"]))
    frame.insert(0, "dataset", meta["dataset"])
    return frame


def _test_batches(size: int, train: Train, model: Model, entry: Dataset, data_dir: Path
                  ) -> tuple[int, Iterator]:
    """(test set size, iterator of (model inputs, labels) in batches of `size`)."""
    from softmoe.data import datasets

    if datasets.read_manifest(data_dir, entry)["source"] != "imagefolder":
        images, labels = datasets.load_split(data_dir, "test", entry)
        return len(labels), ((datasets.model_inputs(images[i:i + size], train, model), labels[i:i + size])
                             for i in range(0, len(labels), size))
    from softmoe.data.datamodule import ImageDataModule

    module = ImageDataModule(train, model, entry, data_dir, seed=0)
    module.setup()
    loader = torch.utils.data.DataLoader(module.test_set, batch_size=size)
    return len(module.test_set), ((datasets.model_inputs(x, train, model), y) for x, y in loader)


def selection_table(model: torch.nn.Module, batches: Iterable, total: int, cfg: Evaluate) -> pd.DataFrame:
    """Rows (k, k_frac, method, renormalize, accuracy, std, z, count) for one model.

    batches: (model inputs, int64 labels) covering the `total` test inputs in a fixed order;
    cfg: params.evaluate.
    """
    n = model.num_experts
    ks = cfg.k_values(n)
    modes = [bool(r) for r in cfg.renormalize]
    oracle_k = k_for(n, cfg.oracle_fraction)
    if not (oracle_k < n and math.comb(n, oracle_k) <= cfg.oracle_limit
            and hasattr(model, "logit_contributions")):
        oracle_k = None
    model.eval().to(DEVICE)
    with torch.inference_mode():
        counts = _correct_counts(model, batches, total, ks, modes, cfg, oracle_k)
    return _rows(counts, n, ks, modes, cfg.random_seeds, oracle_k, total)


def _correct_counts(model, batches, total, ks, modes, cfg, oracle_k) -> dict:
    """Number of correct test inputs per method, summed over batches.

    Keys: "all" -> int; ("alg1", r) -> (len(ks),); ("random", r) -> (seeds, len(ks));
    ("diff", r) -> (2, len(ks)) float64 sums of d_i and d_i² (d_i: alg1 hit minus the mean random
    hit of input i); ("oracle", r) -> (correct int, best-subset indices (N,)). Input i of the test set keeps
    the first k experts of random permutation i of each seed (selection.random_experts).
    """
    n = model.num_experts
    orders = torch.stack([random_experts(total, n, n, s) for s in cfg.random_seeds])  # (seeds, N, n)
    fast = hasattr(model, "logit_contributions")
    counts, start = {}, 0
    for x, y in batches:
        part = slice(start, start + len(y))
        start += len(y)
        x, y, order = x.to(DEVICE), y.to(DEVICE), orders[:, part].to(DEVICE)
        if fast:
            batch = _fast_counts(model, x, y, ks, modes, order, oracle_k, cfg.oracle_limit)
        else:
            batch = _generic_counts(model, x, y, ks, modes, order)
        counts = _accumulate(counts, batch)
    if start != total:
        raise ValueError(f"the batches held {start} inputs, expected {total}")
    return counts


def _accumulate(counts: dict, batch: dict) -> dict:
    if not counts:
        return batch
    for key, value in batch.items():
        if isinstance(value, tuple):                 # oracle: (correct, best subsets)
            counts[key] = (counts[key][0] + value[0], torch.cat([counts[key][1], value[1]]))
        else:
            counts[key] = counts[key] + value
    return counts


def _fast_counts(model, x, y, ks, modes, random_orders, oracle_k, oracle_limit) -> dict:
    """Exact counts from the per-expert logit contributions (every expert runs once)."""
    contributions, mass = model.logit_contributions(x)          # (b, n, m, c), (b, m, n)
    idx = torch.tensor(ks, dtype=torch.long, device=x.device) - 1
    counts = {"all": int(_hits(contributions.sum(dim=(1, 2)), y).sum())}
    alg1 = _prefix_hits(contributions, mass, select_experts(mass, mass.shape[2]), y, modes)
    randoms = [_prefix_hits(contributions, mass, order, y, modes) for order in random_orders]
    for r in modes:
        alg1_hits = alg1[r][:, idx]                                          # (b, ks)
        random_hits = torch.stack([hits[r][:, idx] for hits in randoms])     # (seeds, b, ks)
        counts[("alg1", r)] = alg1_hits.sum(dim=0).cpu()
        counts[("random", r)] = random_hits.sum(dim=1).cpu()
        counts[("diff", r)] = _diff_sums(alg1_hits, random_hits)
        if oracle_k is not None:
            result = _oracle(contributions, mass, y, oracle_k, oracle_limit, r)
            counts[("oracle", r)] = (int(result.correct.sum()), result.best)
    return counts


def _prefix_hits(contributions, mass, order, y, modes) -> dict[bool, torch.Tensor]:
    """For k = 1..n, whether input b is correct when it keeps its first k experts of order[b]:
    {renormalize: (b, n) bool}."""
    prefix = _ordered_prefix(contributions, order)
    return {r: _hits(prefix_logits(prefix, mass, order, r), y.unsqueeze(1)) for r in modes}


def _diff_sums(alg1_hits: torch.Tensor, random_hits: torch.Tensor) -> torch.Tensor:
    """(2, ks) float64 on the CPU: sums over the batch of d_i and d_i², d_i = alg1 hit (b, ks) minus
    the mean over seeds of the random hits (seeds, b, ks)."""
    d = alg1_hits.double() - random_hits.double().mean(dim=0)
    return torch.stack([d.sum(dim=0), (d * d).sum(dim=0)]).cpu()


def _ordered_prefix(contributions: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Cumulative sums of the contributions (b, n, m, c) over each input's expert order (b, n):
    [:, k-1] is the sum over the first k experts."""
    ordered = contributions.gather(1, order[:, :, None, None].expand_as(contributions))
    return ordered.cumsum_(dim=1)


def prefix_logits(prefix: torch.Tensor, mass: torch.Tensor, order: torch.Tensor,
                  renormalize: bool) -> torch.Tensor:
    """Logits (b, n, c) of every k at once: [:, k-1] keeps the first k experts of `order`.

    prefix (b, n, m, c) from the ordered cumulative sums; mass (b, m, n) the combine weight of
    each expert per token. Renormalized, token t's sum is divided by its kept combine mass."""
    if renormalize:
        kept_mass = mass.gather(2, order.unsqueeze(1).expand_as(mass)).cumsum(dim=2)  # (b, m, n)
        return (prefix / kept_mass.transpose(1, 2).unsqueeze(-1)).sum(dim=2)
    return prefix.sum(dim=2)


def _oracle(contributions, mass, y, k, limit, renormalize):
    """selection.oracle_subsets on the CPU (small n only: comb(n, k) <= limit)."""
    contributions, mass, y = contributions.cpu(), mass.cpu(), y.cpu()
    if renormalize:
        return oracle_subsets(contributions, y, k, limit, mass=mass)
    return oracle_subsets(contributions.sum(dim=2), y, k, limit)


def _generic_counts(model, x, y, ks, modes, random_orders) -> dict:
    """Counts from the model's own forward pass: Algorithm 1 via k, random subsets via keep."""
    counts = {"all": int(_hits(model(x), y).sum())}
    for r in modes if ks else ():                # no k < n at n = 1: the all-experts count only
        alg1_hits = torch.stack([_hits(model(x, k=k, renormalize=r), y) for k in ks], dim=1)   # (b, ks)
        random_hits = torch.stack([torch.stack([_hits(model(x, keep=order[:, :k], renormalize=r), y)
                                                for k in ks], dim=1) for order in random_orders])
        counts[("alg1", r)] = alg1_hits.sum(dim=0).cpu()
        counts[("random", r)] = random_hits.sum(dim=1).cpu()
        counts[("diff", r)] = _diff_sums(alg1_hits, random_hits)
    return counts


def _hits(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return logits.argmax(dim=-1) == y


def _rows(counts, n, ks, modes, seeds, oracle_k, total) -> pd.DataFrame:
    rows = []
    for r in modes:
        rows.append(_row(n, n, "all", r, counts["all"] / total))
        if ks:                   # none at n = 1 (the single-expert control): its all-experts row only
            alg1 = counts[("alg1", r)].double() / total                       # (ks,)
            random = counts[("random", r)].double() / total                   # (seeds, ks)
            mean, std = random.mean(dim=0), random.std(dim=0, correction=1)
            diff_sd = _sd_from_sums(counts[("diff", r)], total)                  # (ks,)
            for i, k in enumerate(ks):
                rows.append(_row(k, n, "alg1", r, alg1[i].item(), z=z_score(alg1[i], mean[i], std[i]),
                                 diff_sd=diff_sd[i].item()))
                rows.append(_row(k, n, "random", r, mean[i].item(), std=std[i].item(), count=len(seeds)))
        if oracle_k is not None:
            correct, best = counts[("oracle", r)]
            rows.append(_row(oracle_k, n, "oracle", r, correct / total, count=int(best.unique().numel())))
    frame = pd.DataFrame(rows)
    frame["count"] = frame["count"].astype("Int64")
    frame["images"] = total
    frame["diff_sd"] = frame.pop("diff_sd")            # the selection table's column order
    return frame


def _sd_from_sums(sums: torch.Tensor, total: int) -> torch.Tensor:
    """Sample sd (ddof=1) over `total` values from their sum and sum of squares (2, ks); NaN for
    a single value."""
    if total < 2:
        return torch.full(sums.shape[1:], math.nan, dtype=torch.float64)
    total_sum, squares = sums.double()
    return ((squares - total_sum * total_sum / total) / (total - 1)).clamp(min=0.0).sqrt()


def _row(k, n, method, renormalize, accuracy, std=math.nan, z=math.nan, count=None,
         diff_sd=math.nan) -> dict:
    return {"k": k, "k_frac": k / n, "method": method, "renormalize": renormalize,
            "accuracy": accuracy, "std": std, "z": z, "count": count, "diff_sd": diff_sd}
