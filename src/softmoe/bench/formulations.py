"""Other formulations of the Soft MoE layer's math, built from a SoftMoE's weights, that
`softmoe bench` times against ours: a Python loop over nn.Sequential experts, and torch.vmap
over stacked expert weights."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from softmoe.model.layer import SoftMoE


class LoopSoftMoE(nn.Module):
    """How the original study's code was written: einsum routing, then a Python loop over an
    nn.ModuleList of nn.Sequential(Linear, act, Linear) experts whose outputs are stacked."""

    def __init__(self, ref: SoftMoE):
        super().__init__()
        self.n, self.p, self.normalize = ref.num_experts, ref.slots_per_expert, ref.normalize
        self.phi = nn.Parameter(ref.phi.detach().clone().view(ref.dim, self.n, self.p))
        self.scale = nn.Parameter(ref.scale.detach().clone()) if ref.normalize else None
        self.experts = nn.ModuleList(_expert(ref, j) for j in range(self.n))

    def expert_outputs(self, slots: torch.Tensor) -> torch.Tensor:
        """slots (b, n, p, d) -> (b, n, p, d)."""
        return torch.stack([f(slots[:, j]) for j, f in enumerate(self.experts)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phi = self.phi
        if self.normalize:
            x = F.normalize(x, dim=-1)
            phi = F.normalize(phi, dim=0) * self.scale
        logits = torch.einsum("bmd,dnp->bmnp", x, phi)
        dispatch = logits.softmax(dim=1)
        combine = logits.flatten(start_dim=2).softmax(dim=-1).view_as(logits)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        return torch.einsum("bnpd,bmnp->bmd", self.expert_outputs(slots), combine)


class VmapSoftMoE(LoopSoftMoE):
    """The same experts run by torch.vmap of functional_call over stack_module_state."""

    def __init__(self, ref: SoftMoE):
        super().__init__(ref)
        params, _ = torch.func.stack_module_state(list(self.experts))
        del self.experts
        self.names = list(params)
        self.stacked = nn.ParameterList(nn.Parameter(t.detach()) for t in params.values())
        # A shape template only (meta tensors); deliberately not registered as a submodule.
        self.__dict__["template"] = copy.deepcopy(_expert(ref, 0)).to("meta")

    def expert_outputs(self, slots: torch.Tensor) -> torch.Tensor:
        """Experts mapped over a contiguous leading expert axis (vmap over a strided axis 1 ran
        about 20x slower here)."""
        def one(params, z):
            return torch.func.functional_call(self.template, params, (z,))
        params = dict(zip(self.names, self.stacked))
        return torch.vmap(one)(params, slots.transpose(0, 1).contiguous()).transpose(0, 1)


def _expert(ref: SoftMoE, j: int) -> nn.Sequential:
    """Expert j of `ref` as nn.Sequential(Linear, act, Linear) with the same weights."""
    bias = ref.b1 is not None
    first, second = nn.Linear(ref.dim, ref.expert_hidden, bias=bias), nn.Linear(ref.expert_hidden, ref.dim, bias=bias)
    with torch.no_grad():
        first.weight.copy_(ref.w1[j].t())
        second.weight.copy_(ref.w2[j].t())
        if bias:
            first.bias.copy_(ref.b1[j])
            second.bias.copy_(ref.b2[j])
    act = nn.GELU() if ref.activation == "gelu" else nn.ReLU()
    return nn.Sequential(first, act, second).to(ref.w1.device)
