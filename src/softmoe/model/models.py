"""The study's models at a fixed expert parameter budget (docs/study.md §3) and their parameter counts."""
from __future__ import annotations

import torch
from torch import nn

from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.study.params import MNIST_BUDGET, Model

MNIST_PATCH = 14            # four 14x14 quadrants of a 28x28 image


def expert_hidden(budget: int, n: int) -> int:
    """Hidden width of each of n experts at a fixed budget: floor(budget / n)."""
    hidden = budget // n
    if n < 1 or hidden < 1:
        raise UserError(f"key 'experts': n={n} leaves the experts with hidden width "
                        f"floor({budget}/{n}) = {hidden}; use 1 <= n <= {budget}")
    return hidden


def count_parameters(model: nn.Module) -> dict[str, int]:
    """{"total": all parameters, "experts": expert weights and biases of every Soft MoE layer}."""
    experts = sum(p.numel() for layer in model.modules() if isinstance(layer, SoftMoE)
                  for p in (layer.w1, layer.w2, layer.b1, layer.b2) if p is not None)
    return {"total": sum(p.numel() for p in model.parameters()), "experts": experts}


class MnistSoftMoE(nn.Module):
    """28x28 image -> 4 quadrant tokens (TL, TR, BL, BR) of 196 pixels -> Soft MoE -> Linear head."""

    def __init__(self, num_experts: int, num_classes: int = 10):
        super().__init__()
        self.num_experts = num_experts
        dim = MNIST_PATCH * MNIST_PATCH
        self.moe = SoftMoE(dim, num_experts, expert_hidden(MNIST_BUDGET, num_experts),
                           normalize=True, bias=False, activation="relu", phi_init="uniform")
        self.head = nn.Linear(4 * dim, num_classes, bias=False)

    @staticmethod
    def tokens(images: torch.Tensor) -> torch.Tensor:
        """(b, 28, 28) or (b, 1, 28, 28) -> (b, 4, 196): quadrants in row-major order, flattened."""
        b = images.shape[0]
        if images.shape[-2:] != (28, 28) or images[0].numel() != 784:
            raise ValueError(f"expected 28x28 single-channel images, got {tuple(images.shape)}")
        q = images.reshape(b, 2, MNIST_PATCH, 2, MNIST_PATCH)               # (b, row, y, col, x)
        return q.permute(0, 1, 3, 2, 4).reshape(b, 4, MNIST_PATCH * MNIST_PATCH)

    def forward(self, images: torch.Tensor, k: int | None = None, renormalize: bool = False,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, classes). k: Algorithm 1 with that k; keep (b, k): those experts only."""
        y = self.moe(self.tokens(images), keep=keep, renormalize=renormalize, k=k)   # (b, 4, 196)
        return self.head(y.flatten(1))

    def logit_contributions(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-expert, per-token pieces of the logits, for exact evaluation of any subset S.

        Returns contributions (b, n, m, classes) and mass (b, m, n), the combine weight of each
        expert per token (summed over its slots). Without renormalization
        logits(S) = sum_t sum_{j in S} contributions[:, j, t]; with it, token t's sum is divided
        by sum_{j in S} mass[:, t, j] first. Every expert runs once.
        """
        moe = self.moe
        combine, hidden = moe.slot_hidden(self.tokens(images))              # (b, m, s), (b, n, p, h)
        b, m, _ = combine.shape
        n, p = moe.num_experts, moe.slots_per_expert
        head = self.head.weight.view(-1, m, moe.dim)                        # W_t (classes, m, d)
        through = torch.einsum("jhd,ctd->jhtc", moe.w2, head)              # w2[j] W_tᵀ (n, h, m, classes)
        per_slot = torch.einsum("bjqh,jhtc->bjqtc", hidden, through)       # W_t Ỹ_(j,q)
        if moe.b2 is not None:
            per_slot = per_slot + torch.einsum("jd,ctd->jtc", moe.b2, head).view(1, n, 1, m, -1)
        weights = combine.view(b, m, n, p).permute(0, 2, 3, 1).unsqueeze(-1)  # C_t(j,q) (b, n, p, m, 1)
        contributions = (weights * per_slot).sum(dim=2)                    # (b, n, m, classes)
        return contributions, combine.view(b, m, n, p).sum(dim=3)


class NormRegressor(nn.Module):
    """E1 (Theorem 1): x in R^10 split in order into tokens x dim -> Soft MoE -> fixed sum.

    No normalization, no residual, ReLU experts dim -> floor(10*dim/n) -> dim without bias, so the
    experts hold 20*dim^2 parameters whenever n divides 10*dim. The prediction is the (not
    trained) sum of every output coordinate, shape (B,).
    """

    def __init__(self, tokens: int, dim: int, num_experts: int):
        super().__init__()
        if tokens * dim != 10:
            raise ValueError(f"tokens x dim must be 10 (x in R^10), got {tokens} x {dim}")
        self.tokens, self.dim = tokens, dim
        self.moe = SoftMoE(dim, num_experts, expert_hidden(10 * dim, num_experts),
                           normalize=False, bias=False, activation="relu", phi_init="uniform")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 10) -> prediction (B,)."""
        return self.moe(x.view(-1, self.tokens, self.dim)).sum(dim=(1, 2))


def vision_experts(dim: int, num_experts: int, hidden: int) -> SoftMoE:
    """The Soft MoE layer of the vision models (ViT, Astroformer): GELU, bias, LeCun-normal Φ,
    normalized routing, n experts dim -> hidden -> dim."""
    return SoftMoE(dim, num_experts, hidden, normalize=True, bias=True, activation="gelu",
                   phi_init="lecun")


class SoftMoEMlp(nn.Module):
    """Drop-in for a timm block's MLP: a Soft MoE layer that applies Algorithm 1 when `k` is set
    and keeps the experts `keep` (b, k) when that is set."""

    def __init__(self, moe: SoftMoE):
        super().__init__()
        self.moe = moe
        self.k: int | None = None
        self.keep: torch.Tensor | None = None
        self.renormalize = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x, keep=self.keep, renormalize=self.renormalize, k=self.k)


class SoftMoEViT(nn.Module):
    """timm VisionTransformer whose last `moe_blocks` MLPs are Soft MoE layers (GELU, bias,
    LeCun-normal Φ, normalized routing, hidden floor(embed_dim * expert_mult / n))."""

    def __init__(self, img_size: int, patch_size: int, num_classes: int, num_experts: int,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, moe_blocks: int = 6,
                 expert_mult: int = 64, drop_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        if not 0 <= moe_blocks <= depth:
            raise UserError(f"key 'model.moe_blocks': {moe_blocks} must be between 0 and depth={depth}")
        from softmoe.base.vision import import_torchvision
        import_torchvision()
        from timm.models.vision_transformer import VisionTransformer

        self.num_experts = num_experts
        self.vit = VisionTransformer(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                     num_classes=num_classes, embed_dim=embed_dim, depth=depth,
                                     num_heads=num_heads, drop_rate=drop_rate)
        hidden = expert_hidden(embed_dim * expert_mult, num_experts)
        for block in self.vit.blocks[depth - moe_blocks:]:
            block.mlp = SoftMoEMlp(vision_experts(embed_dim, num_experts, hidden))

    def moe_layers(self) -> list[SoftMoEMlp]:
        return [m for m in self.vit.modules() if isinstance(m, SoftMoEMlp)]

    def forward(self, images: torch.Tensor, k: int | None = None, renormalize: bool = False,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, classes); with k every Soft MoE layer applies Algorithm 1 on its own input,
        with keep (b, k) every Soft MoE layer keeps those experts for input b."""
        return forward_selected(self.vit, images, k, renormalize, keep)


def forward_selected(net: nn.Module, images: torch.Tensor, k: int | None, renormalize: bool,
                     keep: torch.Tensor | None) -> torch.Tensor:
    """net(images) with k / keep / renormalize set on every SoftMoEMlp of net for this call only."""
    layers = [m for m in net.modules() if isinstance(m, SoftMoEMlp)]
    for layer in layers:
        layer.k, layer.keep, layer.renormalize = k, keep, renormalize
    try:
        return net(images)
    finally:
        for layer in layers:
            layer.k, layer.keep, layer.renormalize = None, None, False
