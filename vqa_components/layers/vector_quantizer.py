"""Vector quantizer with an l2-normalised codebook (E-ViLM, Fang et al., section 3.3, eqs. 4 and 7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqa_components.layers.precision import float32_region


@dataclass
class QuantizerOutput:
    """What :class:`VectorQuantizer` computed for inputs of shape ``(..., D)``.

    Attributes:
        codes: ``(...)`` long, the index of each input's nearest code (eq. 4).
        quantized: ``(..., D)`` float32, the chosen codes ``C_q`` (l2-normalised) in the forward pass,
            with the straight-through gradient: its gradient is copied to ``inputs``.
        inputs: ``(..., D)`` float32, the l2-normalised encoder output ``E(x)`` that was quantised.
        codebook_loss: ``||sg[E(x)] - C_q||²``, averaged over the inputs (trains the codebook only).
        commitment_loss: ``||E(x) - sg[C_q]||²``, averaged over the inputs (trains the encoder only),
            not yet multiplied by ``beta``.
        utilisation: percentage of the codebook's codes used by this batch (detached).
        perplexity: ``exp(entropy)`` of this batch's code frequencies (detached); ``M`` when every
            code is used equally often, 1 when one code takes every input.
    """

    codes: Tensor
    quantized: Tensor
    inputs: Tensor
    codebook_loss: Tensor
    commitment_loss: Tensor
    utilisation: Tensor
    perplexity: Tensor


class VectorQuantizer(nn.Module):
    """Nearest-neighbour look-up in a learnable codebook of ``M`` codes of width ``D``.

    With the encoder output ``z = E(x)`` and the codebook ``C = {c_1 .. c_M}``, both l2-normalised
    before the distance ("the embedding before/after look-up have all been l2-normalized", section 4)::

        z' = z / ||z||,   c'_j = c_j / ||c_j||
        k = argmin_j ||z' - c'_j||²  = argmax_j <z', c'_j>                               (eq. 4)
        C_q = c'_k
        quantized = z' + sg[C_q - z']         (forward: C_q; backward: dL/dz' = dL/dC_q)
        L_codebook = ||sg[z'] - C_q||²,   L_commit = ||z' - sg[C_q]||²                  (eq. 7)

    The straight-through estimator copies the gradient at the quantised output to the encoder
    output ``z'`` (and through the normalisation to ``z``); the codebook is trained only by
    ``L_codebook``, the encoder by the copied gradient and ``L_commit``.

    Choices the paper leaves open:

    * averaging: each squared norm is summed over the ``D`` channels (the ``||.||²`` of one
      vector) and averaged over the inputs (all ``b t gh gw`` positions), so each term lies in
      ``[0, 4]`` for unit vectors. (``F.mse_loss`` would divide it by ``D`` as well.)
    * ``beta``: a weight of the commitment term in :meth:`loss`, default 1 (the paper has none,
      i.e. 1; VQ-VAE uses 0.25). The terms are returned unweighted.
    * initialisation: codes drawn from a standard normal ("initialized randomly"), i.e. uniform
      directions on the sphere once normalised. No EMA updates.
    * dead codes (not in the paper, off by default): with ``restart_every = N > 0``, every ``N``
      training forwards each code that no input chose during those ``N`` forwards is moved onto
      one of the current batch's encoder outputs ``z'`` (distinct ones, drawn at random), the
      "random restart" of Dhariwal et al. (Jukebox, 2020) and Zeghidour et al. (SoundStream,
      2021). The first check also serves as a data-dependent initialisation: the codes no input
      chose from the random start are moved onto the data. Under DDP the counts are summed over
      the ranks and rank 0's replacements are broadcast, so the codebooks stay identical. The
      optimizer's moments of a restarted code are left as they are. Without it the tiny E-ViLM
      tokenizer kept 3 of its 256 codes (docs/results/evilm.md).
    * ties go to the lowest index; distances are computed in float32, also under autocast.
    * utilisation and perplexity are measured over one batch (on one device); the paper's
      "VOC. RATE" (Table 6) is the utilisation over its data.

    Args:
        num_codes: ``M`` (paper: 9,420).
        dim: ``D`` (paper: 32).
        beta: weight of the commitment term in :meth:`loss`.
        restart_every: ``N``, training forwards between dead-code restarts; 0 (default) never.
        eps: floor of the norms in the normalisation.

    ``forward(z (..., D))`` returns a :class:`QuantizerOutput`.
    """

    def __init__(
        self, num_codes: int, dim: int, beta: float = 1.0, restart_every: int = 0, eps: float = 1e-6
    ) -> None:
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"VectorQuantizer: num_codes and dim must be positive, got {num_codes}, {dim}")
        if restart_every < 0:
            raise ValueError(f"VectorQuantizer: restart_every must be >= 0, got {restart_every}")
        self.num_codes = num_codes
        self.dim = dim
        self.beta = beta
        self.restart_every = restart_every
        self.eps = eps
        self.codebook = nn.Parameter(torch.randn(num_codes, dim))
        # assignments per code and training forwards since the last restart check (saved, for resuming)
        self.register_buffer("usage", torch.zeros(num_codes, dtype=torch.long))
        self.register_buffer("forwards", torch.zeros((), dtype=torch.long))

    def normalized_codebook(self) -> Tensor:
        """``(M, D)`` the l2-normalised codes ``c'_j`` in float32."""
        return F.normalize(self.codebook.float(), dim=-1, eps=self.eps)

    def lookup(self, z: Tensor) -> Tensor:
        """The nearest code's index ``(...)`` of each input ``z (..., D)`` (eq. 4), without gradients."""
        with torch.no_grad(), float32_region(z.device):
            return self._nearest(F.normalize(z.float(), dim=-1, eps=self.eps), self.normalized_codebook())

    @staticmethod
    def _nearest(z: Tensor, codes: Tensor) -> Tensor:
        # ||z - c||² = 2 - 2 <z, c> for unit vectors: the nearest code has the largest dot product
        return (z.reshape(-1, z.shape[-1]) @ codes.T).argmax(-1).reshape(z.shape[:-1])

    def forward(self, z: Tensor) -> QuantizerOutput:
        if z.shape[-1] != self.dim:
            raise ValueError(f"VectorQuantizer: inputs have width {z.shape[-1]}, the codebook {self.dim}")
        with float32_region(z.device):
            z = F.normalize(z.float(), dim=-1, eps=self.eps)
            codebook = self.normalized_codebook()
            with torch.no_grad():
                codes = self._nearest(z, codebook)
            chosen = F.embedding(codes, codebook)  # codebook[codes]; its backward is deterministic on a CPU
            codebook_loss = (z.detach() - chosen).pow(2).sum(-1).mean()
            commitment_loss = (z - chosen.detach()).pow(2).sum(-1).mean()
            quantized = z + (chosen - z).detach()
            utilisation, perplexity = code_usage(codes, self.num_codes)
            if self.training and self.restart_every and torch.is_grad_enabled():
                self._count_and_restart(codes, z.detach())
        return QuantizerOutput(codes, quantized, z, codebook_loss, commitment_loss, utilisation, perplexity)

    @torch.no_grad()
    def _count_and_restart(self, codes: Tensor, z: Tensor) -> None:
        """Count this forward's assignments; every ``restart_every`` forwards, restart the dead codes.

        The new codebook rows take effect from the next forward (this one's loss used the old ones).
        """
        self.usage += torch.bincount(codes.flatten(), minlength=self.num_codes)
        self.forwards += 1
        if int(self.forwards) % self.restart_every:
            return
        usage = self.usage.clone()
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            torch.distributed.all_reduce(usage)
        dead = (usage == 0).nonzero().flatten()
        self.usage.zero_()
        if dead.numel() == 0:
            return
        pool = z.reshape(-1, self.dim)
        # distinct encoder outputs while there are enough, then repeats
        picks = torch.randperm(pool.shape[0], device=pool.device)
        picks = picks.repeat(-(-dead.numel() // pool.shape[0]))[: dead.numel()]
        new = pool[picks].to(self.codebook.dtype)
        if distributed:
            torch.distributed.broadcast(new, src=0)
        self.codebook.data[dead] = new

    def loss(self, out: QuantizerOutput) -> Tensor:
        """The two quantisation terms of eq. 7: ``L_codebook + beta * L_commit``."""
        return out.codebook_loss + self.beta * out.commitment_loss


def code_usage(codes: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """``(utilisation, perplexity)`` of a code assignment, detached float32 scalars.

    ``utilisation = 100 * |{j : some input got code j}| / M`` (percent of the codebook used);
    ``perplexity = exp(-sum_j p_j log p_j)`` with ``p_j`` the fraction of inputs that got code ``j``.
    """
    counts = torch.bincount(codes.detach().flatten(), minlength=num_codes).float()
    p = counts / counts.sum().clamp_min(1.0)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum()
    return 100.0 * (counts > 0).float().mean(), torch.exp(entropy)
