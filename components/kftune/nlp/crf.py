"""A linear-chain CRF: negative log-likelihood, Viterbi decoding and token marginals.

Batched over sentences with a left-aligned mask (every sentence has at least one token). Start and
end transitions are separate parameters, so no artificial START/STOP tags enter the label
dictionary. Computation runs in float32 even under autocast (log-sum-exp needs the range).
"""

from __future__ import annotations

import torch
from torch import nn


class CRF(nn.Module):
    """``transitions[i, j]`` scores tag ``i`` followed by tag ``j``."""

    def __init__(self, num_tags: int):
        super().__init__()
        self.num_tags = num_tags
        self.transitions = nn.Parameter(torch.empty(num_tags, num_tags).uniform_(-0.1, 0.1))
        self.start = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))
        self.end = nn.Parameter(torch.empty(num_tags).uniform_(-0.1, 0.1))

    def _forward_alphas(self, emissions: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        score = self.start + emissions[:, 0]
        alphas = [score]
        trans = self.transitions.unsqueeze(0)
        for t in range(1, emissions.shape[1]):
            nxt = torch.logsumexp(score.unsqueeze(2) + trans, dim=1) + emissions[:, t]
            score = torch.where(mask[:, t].unsqueeze(1), nxt, score)
            alphas.append(score)
        return alphas

    def log_partition(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emissions = emissions.float()
        return torch.logsumexp(self._forward_alphas(emissions, mask)[-1] + self.end, dim=1)

    def gold_score(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emissions = emissions.float()
        maskf = mask.float()
        emit = emissions.gather(2, tags.unsqueeze(2)).squeeze(2)               # [B, T]
        score = self.start[tags[:, 0]] + (emit * maskf).sum(dim=1)
        if tags.shape[1] > 1:
            trans = self.transitions[tags[:, :-1], tags[:, 1:]]                  # [B, T-1]
            score = score + (trans * maskf[:, 1:]).sum(dim=1)
        last = tags.gather(1, (mask.sum(dim=1) - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
        return score + self.end[last]

    def nll(self, emissions: torch.Tensor, tags: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood per sentence, ``[B]``."""
        return self.log_partition(emissions, mask) - self.gold_score(emissions, tags, mask)

    def marginals(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``P(tag_t = j | sentence)`` as ``[B, T, L]`` (zero at padding)."""
        emissions = emissions.float()
        alphas = torch.stack(self._forward_alphas(emissions, mask), dim=1)     # [B, T, L]
        b, t_len, n = emissions.shape
        lengths = mask.sum(dim=1)
        betas = [emissions.new_zeros(b, n)] * t_len
        beta = self.end.unsqueeze(0).expand(b, n)
        trans = self.transitions.unsqueeze(0)
        for t in range(t_len - 1, -1, -1):
            is_last = (lengths - 1 == t).unsqueeze(1)
            if t < t_len - 1:
                step = torch.logsumexp(trans + (emissions[:, t + 1] + beta).unsqueeze(1), dim=2)
                beta = torch.where(mask[:, t + 1].unsqueeze(1), step, beta)
            beta = torch.where(is_last, self.end.unsqueeze(0).expand(b, n), beta)
            betas[t] = beta
        betas_t = torch.stack(betas, dim=1)
        log_z = torch.logsumexp(alphas[torch.arange(b), lengths - 1] + self.end, dim=1)
        probs = torch.exp(alphas + betas_t - log_z.view(b, 1, 1))
        return probs * mask.unsqueeze(2)

    def viterbi(self, emissions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The best tag sequence per sentence, ``[B, T]`` (0 at padding)."""
        emissions = emissions.float()
        b, t_len, _ = emissions.shape
        score = self.start + emissions[:, 0]
        pointers = []
        trans = self.transitions.unsqueeze(0)
        for t in range(1, t_len):
            best, idx = (score.unsqueeze(2) + trans).max(dim=1)
            nxt = best + emissions[:, t]
            score = torch.where(mask[:, t].unsqueeze(1), nxt, score)
            pointers.append(idx)
        lengths = mask.sum(dim=1)
        cur = (score + self.end).argmax(dim=1)
        path = torch.zeros(b, t_len, dtype=torch.long, device=emissions.device)
        for t in range(t_len - 1, -1, -1):
            valid = t < lengths
            path[:, t] = torch.where(valid, cur, torch.zeros_like(cur))
            if t > 0:
                prev = pointers[t - 1].gather(1, cur.unsqueeze(1)).squeeze(1)
                cur = torch.where(valid, prev, cur)
        return path
