"""The paper's reference numbers (docs/study.md §3 and §5), transcribed as data.

Every number carries its source: TABLE (a table of the paper) or PLOT (read off one of the
paper's plots, ±0.3 points: ±0.003 for accuracies given as fractions, ±0.3 for losses).
Accuracies are fractions in [0, 1], like the project's tables."""
from __future__ import annotations

import pandas as pd

TABLE = "table"
PLOT = "read off plot"     # ±0.3 points: ±0.003 for accuracies (fractions), ±0.3 for losses

# Which reference dataset each of our datasets is compared against (mnist5k is a subset of MNIST).
REFERENCE = {"mnist5k": "mnist", "mnist": "mnist", "cifar10": "cifar10",
             "cifar100": "cifar100", "imagenet": "imagenet"}

# The paper's training setting per reference dataset (docs/study.md §5 E3).
SETTING = {
    "mnist": {"train_size": 60_000, "test_size": 10_000, "epochs": 15, "batch_size": 256,
              "steps": 15 * 235, "optimizer": "Adam, lr 1e-3, constant",
              "experts": [2, 4, 8, 16, 32, 64, 128, 256, 512]},
    "cifar10": {"train_size": 50_000, "test_size": 10_000, "epochs": 500, "batch_size": 800,
                "steps": 500 * 63, "optimizer": "AdamW, lr 3e-4 (5.3e-4 scaled), cosine",
                "experts": [2, 4, 8, 16, 32, 64, 128]},
    "cifar100": {"train_size": 50_000, "test_size": 10_000, "epochs": 500, "batch_size": 800,
                 "steps": 500 * 63, "optimizer": "AdamW, lr 3e-4 (5.3e-4 scaled), cosine",
                 "experts": [2, 8, 16, 64, 128]},
    "imagenet": {"train_size": 1_281_167, "test_size": 50_000, "epochs": 800,
                 "batch_size": "512 per GPU", "steps": None, "optimizer": "LAMB, lr 3e-3 (DeiT-III)",
                 "experts": [2, 8, 16, 64, 128]},
}
# E1: fresh batch of 10,000 every step, 500 epochs of one step each.
SYNTHETIC_STEPS = 500
SYNTHETIC_BATCH = 10_000
RANDOM_SEEDS = 10
TRAINING_SEEDS = 1
# E4: ViT-B with n = 8 very wide experts (2.32B parameters), RTX 2080 Ti, ms in the 6 MoE layers.
LATENCY_SETTING = "ViT-B, n=8 experts of hidden width 30,720 (2.32B parameters), RTX 2080 Ti, width 1.0"

# E1 loss plateaus of the synthetic ||x||_2 regression, per tokenization (tokens x dim) and n.
_E1 = {"5x2": {1: 27.0, 2: 8.5, 5: 1.8, 10: 0.9},
       "2x5": {1: 12.0, 2: 5.0, 5: 1.6, 10: 0.9}}

# E2 oracle specialization on MNIST at k = n/4 (paper table 1).
_E2 = {4: (0.9469, 0.4657, 0.0044, 4), 8: (0.9990, 0.5195, 0.0046, 27),
       16: (1.0000, 0.5894, 0.0034, 112)}
E2_FRACTION = 0.25

# E3 MNIST accuracy (paper figure 1/2): row -> accuracies for n = 2, 4, ..., 512.
_E3_N = [2, 4, 8, 16, 32, 64, 128, 256, 512]
_E3 = {
    ("all", 1.0): [.972, .975, .977, .978, .980, .977, .977, .975, .971],
    ("alg1", 0.5): [.759, .782, .864, .922, .946, .948, .951, .958, .963],
    ("random", 0.5): [.705, .683, .765, .819, .869, .892, .912, .922, .919],
    ("alg1", 0.25): [None, .465, .594, .745, .846, .864, .881, .908, .933],
    ("random", 0.25): [None, .465, .519, .589, .666, .704, .748, .788, .788],
    ("alg1", 0.125): [None, None, .393, .507, .701, .745, .786, .837, .880],
    ("random", 0.125): [None, None, .346, .404, .473, .511, .561, .606, .613],
}

# CIFAR / ImageNet headline numbers (docs/study.md §5 E3): dataset, n (None: any n), method, k, k_frac.
_HEADLINES = [
    ("cifar10", 64, "alg1", 1, None, 0.960, "Algorithm 1, k=1, stays about 96% up to n=64"),
    ("cifar10", 128, "alg1", 1, None, 0.925, "Algorithm 1, k=1, at n=128"),
    ("cifar10", 128, "random", 1, None, 0.204, "random k=1 at n=128"),
    ("cifar100", None, "all", None, 1.0, 0.795, "all experts, about the same for every n"),
    ("cifar100", 8, "alg1", None, 0.125, 0.673, "Algorithm 1, k=n/8, smallest n"),
    ("cifar100", 128, "alg1", None, 0.125, 0.760, "Algorithm 1, k=n/8, largest n"),
    ("imagenet", None, "all", None, 1.0, 0.791, "all experts, about the same for every n"),
    ("imagenet", 128, "all", None, 1.0, 0.7915, "all experts at n=128"),
    ("imagenet", 128, "alg1", None, 0.125, 0.7895, "Algorithm 1, k=n/8, n=128 (99.7% of all)"),
    ("imagenet", 128, "random", None, 0.125, 0.6875, "random k=n/8 at n=128"),
]

# E4 inference time (ms) of the 6 Soft MoE layers, per batch size and k/n (paper table 3).
_E4 = {1: {1.0: 21.50, 0.75: 19.46, 0.5: 14.75, 0.25: 9.96},
       100: {1.0: 99.03, 0.75: 78.26, 0.5: 78.86, 0.25: 51.69}}


def e1_plateaus() -> pd.DataFrame:
    """Columns tokens, n, loss, source."""
    rows = [{"tokens": t, "n": n, "loss": loss, "source": PLOT}
            for t, by_n in _E1.items() for n, loss in by_n.items()]
    return pd.DataFrame(rows)


def e2_oracle() -> pd.DataFrame:
    """Columns n, k_frac, oracle, random, random_std, distinct, source (MNIST, k = n/4)."""
    rows = [{"n": n, "k_frac": E2_FRACTION, "oracle": best, "random": rnd, "random_std": std,
             "distinct": distinct, "source": TABLE}
            for n, (best, rnd, std, distinct) in _E2.items()]
    return pd.DataFrame(rows)


def e3_mnist() -> pd.DataFrame:
    """Columns n, method (all|alg1|random), k_frac, accuracy, source; evaluated cells only."""
    rows = [{"n": n, "method": method, "k_frac": frac, "accuracy": acc, "source": PLOT}
            for (method, frac), accs in _E3.items()
            for n, acc in zip(_E3_N, accs) if acc is not None]
    return pd.DataFrame(rows)


def headlines(dataset: str) -> pd.DataFrame:
    """Reference points of one reference dataset: n, method, k, k_frac, accuracy, what, source.

    MNIST's points are the whole E3 table; the ViT datasets have the headline numbers."""
    if dataset == "mnist":
        frame = e3_mnist().assign(k=None, what="")
        return frame[["n", "method", "k", "k_frac", "accuracy", "what", "source"]]
    rows = [{"n": n, "method": m, "k": k, "k_frac": f, "accuracy": acc, "what": what, "source": PLOT}
            for ds, n, m, k, f, acc, what in _HEADLINES if ds == dataset]
    return pd.DataFrame(rows, columns=["n", "method", "k", "k_frac", "accuracy", "what", "source"])


def e4_latency() -> pd.DataFrame:
    """Columns batch, k_frac, ms, ratio (to k = n), source."""
    rows = [{"batch": b, "k_frac": f, "ms": ms, "ratio": ms / by_f[1.0], "source": TABLE}
            for b, by_f in _E4.items() for f, ms in by_f.items()]
    return pd.DataFrame(rows)
