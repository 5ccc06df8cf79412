"""The Soft MoE layer (docs/study.md §2) and its selective path (Algorithm 2, docs/study.md §4).

Shapes: b inputs, m tokens, d = dim, n experts, p slots per expert, s = n*p slots, h = hidden.
    logits  L = X Φ                                  (b, m, s)
    dispatch D = softmax(L) over tokens (dim 1)       (b, m, s)   each column sums to 1
    combine  C = softmax(L) over slots  (dim 2)       (b, m, s)   each row sums to 1
    slots    X̃ = Dᵀ X                                 (b, s, d)
    outputs  Ỹ_s = f_j(X̃_s) for the p slots of j      (b, s, d)
    Y = C Ỹ                                           (b, m, d)
With `normalize`, X is l2-normalized per token and Φ per column (times a learned scalar);
the normalized tokens are what is dispatched (computed as (D * 1/|x|)ᵀ X, see SoftMoE._logits).
`reference_forward` below is the same computation written plainly from these equations; the
class computes it in the cheaper of two exact forms (`SoftMoE.token_side`, chosen once per call)
and runs only the kept experts of Algorithm 2 through one named backend (`SoftMoE.keep_backend`).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from softmoe.model.selection import select_experts

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}
PHI_INITS = ("uniform", "lecun")
NORM_EPS = 1e-12    # as F.normalize: x / max(|x|, eps)
MEMORY_WEIGHT = 50  # multiply-adds one float written costs, for the choice in SoftMoE.token_side
GROUPED_MM_MAJORS = (9, 10)  # CUDA compute capabilities where torch._grouped_mm has its bf16 kernel


def reference_forward(layer: SoftMoE, x: torch.Tensor, keep: torch.Tensor | None = None,
                      renormalize: bool = False) -> torch.Tensor:
    """The layer read off docs/study.md §2 and §4, plainly and slowly (the tests' yardstick;
    `SoftMoE.forward` computes the same with fewer and larger operations).

    x (b, m, d); keep (b, k) the experts kept per input (None: all)."""
    phi = layer.phi
    if layer.normalize:                                        # tokens and Φ's columns l2-normalized
        x = F.normalize(x, dim=-1, eps=NORM_EPS)
        phi = F.normalize(phi, dim=0, eps=NORM_EPS) * layer.scale
    logits = x @ phi                                           # L = X Φ               (b, m, s)
    dispatch = logits.softmax(dim=1)                           # D: over the tokens
    combine = logits.softmax(dim=2)                            # C: over the slots
    slots = dispatch.transpose(1, 2) @ x                       # X̃ = Dᵀ X (normalized) (b, s, d)
    p = layer.slots_per_expert
    outputs = torch.stack([layer._expert(s // p, slots[:, s]) for s in range(slots.shape[1])], dim=1)  # Ỹ
    if keep is not None:                                       # Algorithm 1/2: the other experts do not run
        kept = torch.zeros(x.shape[0], layer.num_experts, dtype=torch.bool, device=x.device)
        kept = kept.scatter(1, keep, True).repeat_interleave(p, dim=1).unsqueeze(1)       # (b, 1, s)
        combine = logits.masked_fill(~kept, float("-inf")).softmax(dim=2) if renormalize else combine * kept
    return combine @ outputs                                   # Y = C Ỹ               (b, m, d)


class SoftMoE(nn.Module):
    """Soft MoE with n stacked MLP experts; `keep` keeps a subset per input (see `forward`)."""

    def __init__(self, dim: int, num_experts: int, expert_hidden: int, slots_per_expert: int = 1,
                 normalize: bool = True, bias: bool = False, activation: str = "relu",
                 phi_init: str = "uniform", renormalize: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        if phi_init not in PHI_INITS:
            raise ValueError(f"phi_init must be one of {PHI_INITS}, got {phi_init!r}")
        if min(dim, num_experts, expert_hidden, slots_per_expert) < 1:
            raise ValueError("dim, num_experts, expert_hidden and slots_per_expert must be >= 1, got "
                             f"{dim}, {num_experts}, {expert_hidden}, {slots_per_expert}")
        self.dim, self.num_experts, self.expert_hidden = dim, num_experts, expert_hidden
        self.slots_per_expert, self.normalize, self.renormalize = slots_per_expert, normalize, renormalize
        self.activation = activation
        self.act = ACTIVATIONS[activation]
        n, h, s = num_experts, expert_hidden, num_experts * slots_per_expert
        self.phi = nn.Parameter(torch.empty(dim, s))
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.w1 = nn.Parameter(torch.empty(n, dim, h))
        self.w2 = nn.Parameter(torch.empty(n, h, dim))
        self.b1 = nn.Parameter(torch.empty(n, h)) if bias else None
        self.b2 = nn.Parameter(torch.empty(n, dim)) if bias else None
        self.reset_parameters(phi_init)

    def reset_parameters(self, phi_init: str = "uniform") -> None:
        """Φ: uniform[-1, 1] or LeCun normal; experts: like independent nn.Linear layers."""
        if phi_init == "uniform":
            nn.init.uniform_(self.phi, -1.0, 1.0)
        else:
            nn.init.normal_(self.phi, std=1.0 / math.sqrt(self.dim))
        for weight, bias, fan_in in ((self.w1, self.b1, self.dim), (self.w2, self.b2, self.expert_hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(weight, -bound, bound)
            if bias is not None:
                nn.init.uniform_(bias, -bound, bound)

    # ---- routing -------------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The logits L (b, m, s) and the tokens' inverse norms (b, m, 1), None without normalization.

        The normalized tokens x/|x| are never materialized (a copy of the largest tensor):
        L = (x Φ̂) * inv, and as the normalized tokens are what is dispatched, the slot inputs
        are X̃ = Dᵀ (x * inv) = (D * inv)ᵀ x, see `_dispatch`.
        """
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"expected input (batch, tokens, {self.dim}), got {tuple(x.shape)}")
        if not self.normalize:
            return x @ self.phi, None
        inv = 1.0 / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(NORM_EPS)
        phi = F.normalize(self.phi, dim=0, eps=NORM_EPS) * self.scale      # (d, s)
        return (x @ phi) * inv, inv

    @staticmethod
    def _dispatch(logits: torch.Tensor, inv: torch.Tensor | None) -> torch.Tensor:
        """D (softmax over tokens) with token t's row times inv_t, so that X̃ = _dispatch(L, inv)ᵀ x."""
        dispatch = logits.softmax(dim=1)
        return dispatch if inv is None else dispatch * inv

    def routing(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(dispatch, combine), each (b, m, n*p): softmax over tokens, softmax over slots."""
        logits, _ = self._logits(x)
        return logits.softmax(dim=1), logits.softmax(dim=2)

    # ---- experts, all of them ----------------------------------------------------------------
    def token_side(self, m: int) -> bool:
        """Whether the full path with m tokens runs the experts' linear maps on the tokens, not the slots.

        Both forms are exact (the first layer is linear, so X̃_s w1 = Σ_t D_ts X_t w1, and
        C Ỹ = Σ_s C_ts act(·) w2). The slot form materializes (b, n*p, d) slot tensors, the token
        form (b, m, n*p, h) hidden ones; the cost per input (multiply-adds, plus 50 per float
        written, a rough CPU/GPU memory-to-compute ratio) picks the cheaper. Many tiny experts
        (MNIST n >= 64) take the token form, so n=512 trains about as fast as n=2.
        """
        d, n, p, h = self.dim, self.num_experts, self.slots_per_expert, self.expert_hidden
        slot_cost = n * p * d * (2 * m + 2 * h) + MEMORY_WEIGHT * n * p * (2 * d + h)
        token_cost = m * n * h * (2 * d + 2 * p) + MEMORY_WEIGHT * 2 * m * n * p * h
        return token_cost < slot_cost

    def _hidden(self, x: torch.Tensor, dispatch: torch.Tensor, token_form: bool) -> torch.Tensor:
        """Every expert's hidden activations on its p slots: act(X̃ w1 + b1), (b, n, p, h).

        dispatch (b, m, s) comes from `_dispatch`, so X̃ = dispatchᵀ x. In the token form
        (`token_side`, chosen once per call) the result is a view of `_token_hidden`'s
        expert-last tensor.
        """
        if token_form:
            return self._token_hidden(x, dispatch).permute(0, 3, 1, 2)
        b, m, _ = x.shape
        n, p, d, h = self.num_experts, self.slots_per_expert, self.dim, self.expert_hidden
        slots = dispatch.transpose(1, 2) @ x                               # X̃ (b, s, d)
        z = slots.view(b, n, p, d).transpose(0, 1).reshape(n, b * p, d)
        pre = torch.bmm(z, self.w1).view(n, b, p, h).transpose(0, 1)       # (b, n, p, h)
        if self.b1 is not None:
            pre = pre + self.b1.view(1, n, 1, h)
        return self.act(pre)

    def _token_hidden(self, x: torch.Tensor, dispatch: torch.Tensor) -> torch.Tensor:
        """The token form of `_hidden`, laid out expert-last: (b, p, h, n).

        Σ_t D_t(j,q) (x_t w1[j]) for every token t and expert j: one matmul with the experts'
        first maps side by side (columns ordered (h, n)), then the dispatch-weighted sum over
        tokens. With the experts innermost, the elementwise products run over contiguous runs
        of n values (many tiny experts have h as small as 1).
        """
        b, m, _ = x.shape
        n, p, d, h = self.num_experts, self.slots_per_expert, self.dim, self.expert_hidden
        w1 = self.w1.permute(1, 2, 0).reshape(d, h * n)                   # w1[j][:, i] at column i*n + j
        per_token = (x @ w1).view(b, m, 1, h, n)                          # x_t w1[j]
        weights = dispatch.view(b, m, n, p).transpose(2, 3).unsqueeze(3)  # D_t(j,q) (b, m, p, 1, n)
        pre = (weights * per_token).sum(dim=1)                            # (b, p, h, n)
        if self.b1 is not None:
            pre = pre + self.b1.t().view(1, 1, h, n)
        return self.act(pre)

    def _second_layer(self, hidden: torch.Tensor) -> torch.Tensor:
        """Ỹ = hidden w2 + b2 per expert: (b, n, p, h) -> (b, s, d)."""
        b, n, p, h = hidden.shape
        z = hidden.transpose(0, 1).reshape(n, b * p, h)
        z = torch.bmm(z, self.w2) if self.b2 is None else torch.baddbmm(self.b2.unsqueeze(1), z, self.w2)
        return z.view(n, b, p, self.dim).transpose(0, 1).reshape(b, n * p, self.dim)

    def _combine_all(self, hidden: torch.Tensor, combine: torch.Tensor, token_form: bool) -> torch.Tensor:
        """Y = C Ỹ from the hidden activations (b, n, p, h) and C (b, m, s) -> (b, m, d).

        Token form: Σ_j Σ_q C_t(j,q) act_(j,q) w2[j], one matmul with the experts' second maps
        stacked (rows ordered (h, n), as `_token_hidden`'s layout).
        """
        b, m, _ = combine.shape
        if not token_form:
            return combine @ self._second_layer(hidden)
        n, p, h, d = self.num_experts, self.slots_per_expert, self.expert_hidden, self.dim
        per_slot = combine.view(b, m, n, p)
        c = per_slot.transpose(2, 3).unsqueeze(3)                          # C_t(j,q) (b, m, p, 1, n)
        mixed = c * hidden.permute(0, 2, 3, 1).unsqueeze(1)                # (b, m, p, h, n)
        mixed = (mixed if p == 1 else mixed.sum(dim=2)).reshape(b, m, h * n)
        y = mixed @ self.w2.transpose(0, 1).reshape(h * n, d)              # (b, m, d)
        if self.b2 is not None:
            y = y + per_slot.sum(dim=3) @ self.b2                          # Σ_s C_ts b2[j(s)]
        return y

    def slot_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(combine (b, m, s), hidden (b, n, p, h)) with every expert run, so that
        Ỹ of slot (j, q) = hidden[:, j, q] @ w2[j] + b2[j]."""
        logits, inv = self._logits(x)
        return logits.softmax(dim=2), self._hidden(x, self._dispatch(logits, inv), self.token_side(x.shape[1]))

    def slot_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(combine (b, m, s), Ỹ (b, s, d)) with every expert run: Y(S) = C[:, :, S] @ Ỹ[:, S]."""
        combine, hidden = self.slot_hidden(x)
        return combine, self._second_layer(hidden)

    # ---- experts, a subset per input (Algorithm 2) ------------------------------------------
    def keep_backend(self, x: torch.Tensor, k: int) -> str:
        """How `forward` runs k kept experts per input on x (b, m, d); all give the same outputs.

        "masked"      token_side(m) (many tiny experts): the dense token form, C zeroed on the
                      dropped experts (every expert runs; on CPU faster than any grouping).
        Otherwise only the kept experts run (Algorithm 2). Eager on the CPU, where a host sync
        is free:
        "loop"        rows grouped per expert, one matmul pair per kept expert, one host sync
                      for the group sizes.
        On CUDA and under torch.compile, static shapes and no host sync (so a CUDA graph can
        capture the layer and torch.compile sees one graph):
        "grouped_mm"  rows sorted by expert, group offsets computed on the device, one grouped
                      GEMM per linear map (torch._grouped_mm) where it runs without a host sync:
                      bf16 on CUDA compute capability 9.x/10.x or on the CPU, rows 16-byte aligned;
        "gathered"    otherwise, one bmm pair with each (input, expert) pair's weights gathered;
                      it copies b*k experts' weights, so on CUDA only when b*k <= n (else "loop").
        """
        if self.token_side(x.shape[1]):
            return "masked"
        if not (x.is_cuda or torch.compiler.is_compiling()):
            return "loop"
        if _grouped_mm_sync_free(x, self.dim, self.expert_hidden):
            return "grouped_mm"
        if x.shape[0] * k <= self.num_experts or not x.is_cuda:
            return "gathered"
        return "loop"

    def _check_keep(self, keep: torch.Tensor, batch: int) -> None:
        if keep.dtype != torch.long or keep.dim() != 2 or keep.shape[0] != batch or keep.shape[1] < 1:
            raise ValueError(f"keep must be a LongTensor (batch={batch}, k >= 1), got {keep.dtype} "
                             f"{tuple(keep.shape)}")
        if torch.compiler.is_compiling() or (keep.is_cuda and torch.cuda.is_current_stream_capturing()):
            return                 # the value checks below read keep on the host
        if keep.min() < 0 or keep.max() >= self.num_experts:
            raise ValueError(f"keep holds expert indices outside [0, {self.num_experts})")
        ordered = keep.sort(dim=1).values
        if (ordered[:, 1:] == ordered[:, :-1]).any():
            raise ValueError("keep lists an expert twice for the same input")

    def _run_loop(self, slots: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """Each expert on exactly the rows that kept it: slots (P, p, d), expert (P,) -> (P, p, d).

        The rows are grouped by expert, so expert j does one matmul over its c_j rows and
        experts nobody kept never run (the group sizes are read on the host).
        """
        p, d = self.slots_per_expert, self.dim
        order = torch.argsort(expert, stable=True)
        counts = torch.bincount(expert, minlength=self.num_experts).tolist()
        outputs = []
        for j, z in enumerate(slots[order].split(counts)):                # z (c_j, p, d)
            if len(z):
                outputs.append(self._expert(j, z.reshape(-1, d)).view(-1, p, d))
        return torch.cat(outputs)[torch.argsort(order)]

    def _expert(self, j: int, z: torch.Tensor) -> torch.Tensor:
        """f_j on rows (r, d) -> (r, d)."""
        z = z @ self.w1[j] if self.b1 is None else torch.addmm(self.b1[j], z, self.w1[j])
        z = self.act(z)
        return z @ self.w2[j] if self.b2 is None else torch.addmm(self.b2[j], z, self.w2[j])

    def _run_grouped_mm(self, slots: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """As `_run_loop`, with static shapes: rows sorted by expert, offsets on the device, one
        grouped GEMM per linear map (experts with no rows do no work), rows put back in order."""
        pairs, p, d = slots.shape
        order = torch.argsort(expert, stable=True)
        counts = torch.zeros(self.num_experts, dtype=torch.long, device=expert.device)
        counts = counts.scatter_add(0, expert, torch.ones_like(expert))
        offsets = (counts.cumsum(0) * p).to(torch.int32)                  # end of each expert's rows
        row_expert = expert[order].view(pairs, 1).expand(pairs, p).reshape(-1)  # (pairs*p,)
        z = torch._grouped_mm(slots[order].reshape(pairs * p, d), self.w1, offs=offsets)
        z = self.act(z if self.b1 is None else z + self.b1[row_expert])
        z = torch._grouped_mm(z, self.w2, offs=offsets)
        z = (z if self.b2 is None else z + self.b2[row_expert]).view(pairs, p, d)
        return torch.empty_like(z).index_copy_(0, order, z)

    def _run_gathered(self, slots: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
        """As `_run_loop`, with static shapes: one bmm pair, each (input, expert) pair with its
        expert's weights gathered (a copy of b*k experts' weights)."""
        w1, w2 = self.w1[expert], self.w2[expert]
        z = torch.bmm(slots, w1) if self.b1 is None else torch.baddbmm(self.b1[expert].unsqueeze(1), slots, w1)
        z = self.act(z)
        return torch.bmm(z, w2) if self.b2 is None else torch.baddbmm(self.b2[expert].unsqueeze(1), z, w2)

    def _forward_kept(self, x: torch.Tensor, logits: torch.Tensor, inv: torch.Tensor | None,
                      keep: torch.Tensor, renormalize: bool, combine: torch.Tensor | None,
                      backend: str) -> torch.Tensor:
        """Algorithm 2: only the kept experts' slots are filled, run and combined (b, m, d).

        Dropping an expert's output rows from C Ỹ is the same as zeroing them. Without
        renormalization C keeps the weights of the softmax over all slots (`combine`, when the
        caller already has it); with it, C is the softmax over the kept slots only. D is the
        softmax over tokens, column by column, so the kept columns are unchanged. `backend`
        (see `keep_backend`) says how the kept experts run.
        """
        b, m, _ = logits.shape
        p, d, k = self.slots_per_expert, self.dim, keep.shape[1]
        kept_slots = (keep.unsqueeze(2) * p + torch.arange(p, device=keep.device)).view(b, 1, k * p)
        kept_slots = kept_slots.expand(b, m, k * p)
        kept_logits = logits.gather(2, kept_slots)                        # (b, m, k*p)
        slots = self._dispatch(kept_logits, inv).transpose(1, 2) @ x      # X̃ of kept slots (b, k*p, d)
        run = {"loop": self._run_loop, "grouped_mm": self._run_grouped_mm, "gathered": self._run_gathered}[backend]
        outputs = run(slots.view(b * k, p, d), keep.flatten())          # (b*k, p, d)
        if renormalize:
            combine = kept_logits.softmax(dim=2)
        else:
            combine = (logits.softmax(dim=2) if combine is None else combine).gather(2, kept_slots)
        return combine @ outputs.view(b, k * p, d)                        # (b, m, d)

    def _forward_masked(self, x: torch.Tensor, logits: torch.Tensor, inv: torch.Tensor | None,
                        keep: torch.Tensor, renormalize: bool, combine: torch.Tensor | None) -> torch.Tensor:
        """The kept experts' outputs (b, m, d) from the dense token form, C zeroed on dropped slots.

        Same values as `_forward_kept`, but every expert runs and the dropped ones are discarded.
        """
        b, m, s = logits.shape
        n, p = self.num_experts, self.slots_per_expert
        kept = torch.zeros(b, n, dtype=torch.bool, device=logits.device).scatter_(1, keep, True)
        dropped = ~kept.view(b, 1, n, 1).expand(b, 1, n, p).reshape(b, 1, s)
        if renormalize:
            combine = logits.masked_fill(dropped, float("-inf")).softmax(dim=2)
        else:
            combine = (logits.softmax(dim=2) if combine is None else combine).masked_fill(dropped, 0.0)
        token_form = True                      # "masked" is chosen only where token_side(m) holds
        return self._combine_all(self._hidden(x, self._dispatch(logits, inv), token_form), combine, token_form)

    # ---- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None,
                renormalize: bool | None = None, k: int | None = None) -> torch.Tensor:
        """x (b, m, d) -> (b, m, d). keep (b, k): only those experts count (others output zero).

        k instead of keep: Algorithm 1 picks, per input, the k experts with the largest combine
        weight. renormalize (None = the module default) makes C the softmax over the kept slots
        only; otherwise C is not renormalized (Algorithm 1). D is never changed.

        How the kept experts run is `keep_backend`'s choice. Wide experts (ViT): only the kept
        experts run, each on the rows that kept it (Algorithm 2), so the cost falls with k; on
        CUDA and under torch.compile without any host sync. Many tiny experts (MNIST n >= 64):
        the dense token form runs every expert and masks the dropped ones out of C, because on
        CPU that is faster than a per-expert loop; the dropped experts' FLOPs are then computed
        and discarded (and the output does not depend on their values unless those are inf or NaN).
        """
        logits, inv = self._logits(x)
        if keep is None and k is None:
            token_form = self.token_side(x.shape[1])                 # the form, chosen once per call
            hidden = self._hidden(x, self._dispatch(logits, inv), token_form)
            return self._combine_all(hidden, logits.softmax(dim=2), token_form)
        combine = None
        if keep is None:
            combine = logits.softmax(dim=2)
            keep = select_experts(combine, k, self.slots_per_expert)     # valid by construction
        elif k is not None:
            raise ValueError("pass either keep or k, not both")
        else:
            keep = keep.to(x.device)
            self._check_keep(keep, x.shape[0])
        renormalize = self.renormalize if renormalize is None else renormalize
        backend = self.keep_backend(x, keep.shape[1])
        if backend == "masked":
            return self._forward_masked(x, logits, inv, keep, renormalize, combine)
        return self._forward_kept(x, logits, inv, keep, renormalize, combine, backend)


def _grouped_mm_sync_free(x: torch.Tensor, *dims: int) -> bool:
    """Whether torch._grouped_mm runs on x without a host sync (and under torch.compile): bf16
    on the CPU (a loop over the groups on the host) or on CUDA compute capability 9.x/10.x (its
    grouped GEMM kernel); every row 16-byte aligned."""
    if x.dtype != torch.bfloat16 or any(dim * x.element_size() % 16 for dim in dims):
        return False
    return not x.is_cuda or torch.cuda.get_device_capability(x.device)[0] in GROUPED_MM_MAJORS
