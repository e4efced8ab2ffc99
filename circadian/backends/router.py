"""The memory router: per turn, whether the memory adapter answers or the base model does.

After MEGa (gated LoRA memories): a general question answered by the base model is answered
exactly as before any night, so general behaviour cannot drift there. The router is a logistic
regression on the base model's hidden state of the user's message (mean over its tokens, at a
middle layer and the last one), fitted each night on that night's fact questions (and every earlier
night's, kept in the file) against general prompts. It is stored beside the adapter weights as
`router.json` and checked with them.

The classifier is small enough to fit with torch's L-BFGS in well under a second; its cost at chat
time is one forward pass of the base model over the user's message.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FILE = "router.json"
VERSION = 1


@dataclass
class Router:
    """A fitted router: standardization, weights and threshold over `features` of the base model."""

    mean: list[float]
    scale: list[float]
    weights: list[float]
    bias: float
    threshold: float = 0.5
    layers: list[int] = field(default_factory=list)
    questions: list[str] = field(default_factory=list)  # every fact question it was fitted on
    general: int = 0  # how many general prompts it was fitted on
    version: int = VERSION

    def scores(self, features) -> list[float]:
        """Given an [n, d] tensor of features, return each one's probability of wanting the adapter."""
        import torch

        x = (features.float() - torch.tensor(self.mean)) / torch.tensor(self.scale)
        return torch.sigmoid(x @ torch.tensor(self.weights) + self.bias).tolist()

    def wants_adapter(self, features) -> list[bool]:
        return [s >= self.threshold for s in self.scores(features)]

    def save(self, folder: Path) -> Path:
        from circadian.core.fsutil import atomic_write_json

        path = folder / FILE
        atomic_write_json(path, asdict(self))
        return path


def load(folder: Path | None) -> Router | None:
    """Given an adapter folder, return its router, or None when it has none (or it cannot be read:
    then every turn uses the adapter, as before routers existed)."""
    if folder is None or not (folder / FILE).is_file():
        return None
    try:
        data = json.loads((folder / FILE).read_text(encoding="utf-8"))
        return Router(**{k: v for k, v in data.items() if k in Router.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def fit(positive, negative, *, layers: list[int], questions: list[str], l2: float = 1e-2) -> Router:
    """Given [n, d] feature tensors of fact questions (positive) and general prompts (negative),
    return the fitted router (classes weighted equally, L2-regularized logistic regression)."""
    import torch

    x = torch.cat([positive, negative]).float()
    y = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))])
    mean, scale = x.mean(0), x.std(0).clamp_min(1e-4)
    x = (x - mean) / scale
    weight = torch.where(y > 0, 0.5 / max(1, len(positive)), 0.5 / max(1, len(negative)))
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ w + b
        loss = (weight * torch.nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
        loss = loss + l2 * (w * w).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Router(
        mean=mean.tolist(),
        scale=scale.tolist(),
        weights=w.detach().tolist(),
        bias=float(b.detach()),
        layers=layers,
        questions=questions,
        general=len(negative),
    )
