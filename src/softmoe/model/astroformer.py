"""Astroformer-1 (Dagli 2023) with Soft MoE MLPs in its transformer stage (docs/astroformer.md).

The network is timm's own MaxxVit (the CoAtNet family) with the Astroformer-1 configuration:
a conv stem, three stages of MBConv blocks and a last stage of transformer blocks ('C', 'C',
'C', 'T'), then timm's pooled norm + MLP classifier head (NormMlpClassifierHead). At 96 px the last stage sees 3x3 = 9 tokens
of 768. In each of its blocks the MLP is replaced by a Soft MoE layer (GELU, bias, LeCun-normal
Φ, normalized routing, n experts 768 -> floor(768 * expert_mult / n) -> 768) and the residual
around it is removed; the attention residual and every residual of the conv stages stay.
"""
from __future__ import annotations

import torch
from torch import nn

from softmoe.base.errors import UserError
from softmoe.model.layer import SoftMoE
from softmoe.model.models import SoftMoEMlp, expert_hidden, forward_selected, vision_experts
from softmoe.study.params import astroformer_problems


class SoftMoETransformerBlock(nn.Module):
    """A timm TransformerBlock2d whose MLP is a Soft MoE on its h*w tokens, with no residual
    around it: x = shortcut(x) + attn(norm1(x)); x = moe(norm2(x))."""

    def __init__(self, block: nn.Module, moe: SoftMoE):
        super().__init__()
        del block.mlp
        self.block, self.mlp = block, SoftMoEMlp(moe)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.block
        x = b.shortcut(x) + b.drop_path1(b.ls1(b.attn(b.norm1(x))))
        n, c, h, w = x.shape
        tokens = b.norm2(x).flatten(2).transpose(1, 2)                     # (n, h*w, c), row-major
        y = self.mlp(tokens).transpose(1, 2).reshape(n, c, h, w)
        return b.drop_path2(b.ls2(y))


class SoftMoEAstroformer(nn.Module):
    """Astroformer-1 (timm MaxxVit, 'C-C-C-T') whose transformer blocks' MLPs are Soft MoE layers."""

    def __init__(self, num_classes: int, num_experts: int, embed_dims=(96, 192, 384, 768),
                 depths=(2, 6, 14, 2), stem_width: int = 64, head_hidden: int = 768,
                 img_size: int = 96, expert_mult: int = 64, drop_rate: float = 0.0, in_chans: int = 3):
        super().__init__()
        problems = astroformer_problems({"embed_dims": embed_dims, "depths": depths,
                                         "img_size": img_size, "expert_mult": expert_mult})
        if problems:
            raise UserError(problems[0])
        from softmoe.base.vision import import_torchvision
        import_torchvision()
        from timm.models.maxxvit import MaxxVit, MaxxVitCfg

        cfg = MaxxVitCfg(embed_dim=tuple(embed_dims), depths=tuple(depths),
                         block_type=("C",) * (len(depths) - 1) + ("T",), stem_width=stem_width,
                         head_hidden_size=head_hidden)
        self.net = MaxxVit(cfg, img_size=img_size, in_chans=in_chans, num_classes=num_classes,
                           drop_rate=drop_rate)
        self.num_experts = num_experts
        dim = embed_dims[-1]
        hidden = expert_hidden(dim * expert_mult, num_experts)
        stage = self.net.stages[-1]
        stage.blocks = nn.Sequential(*(
            SoftMoETransformerBlock(block, vision_experts(dim, num_experts, hidden)) for block in stage.blocks))

    def moe_layers(self) -> list[SoftMoEMlp]:
        return [m for m in self.net.modules() if isinstance(m, SoftMoEMlp)]

    def forward(self, images: torch.Tensor, k: int | None = None, renormalize: bool = False,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (b, classes); with k every Soft MoE layer applies Algorithm 1 on its own input,
        with keep (b, k) every Soft MoE layer keeps those experts for input b."""
        return forward_selected(self.net, images, k, renormalize, keep)
