"""Models for ``gradpack train``: a small CNN for 8x8 digits, a wide MLP for the same
digits (4.3M parameters: communication-bound on purpose, for slow-link runs), a small
byte-level transformer language model."""

from __future__ import annotations

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """conv(1->16) -> conv(16->32) -> maxpool -> fc(512->64) -> fc(64->10); ~38k parameters."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(),
                                        nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class WideMLP(nn.Module):
    """64 -> width -> width -> 10 with ReLU; 4.3M parameters at the default width 2048."""

    def __init__(self, width: int = 2048):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, width), nn.ReLU(),
                                 nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class TinyLM(nn.Module):
    """Byte-level causal transformer: embedding + learned positions, ``layers`` pre-norm
    encoder blocks with a causal mask, tied output head; ~120k parameters."""

    def __init__(self, *, context: int = 64, dim: int = 64, heads: int = 4, layers: int = 2,
                 vocab: int = 256):
        super().__init__()
        self.context = context
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.zeros(context, dim))
        block = nn.TransformerEncoderLayer(dim, heads, 4 * dim, dropout=0.0, batch_first=True,
                                           norm_first=True)
        self.blocks = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        nn.init.normal_(self.embed.weight, std=0.02)  # tied head: small logits, loss ln(256)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        t = tokens.shape[1]
        h = self.embed(tokens) + self.pos[:t]
        # the causal mask is made per call, not a buffer: DDP would broadcast it every step
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=tokens.device)
        h = self.blocks(h, mask=mask, is_causal=True)
        return self.norm(h) @ self.embed.weight.T


def build(name: str, **kw) -> nn.Module:
    if name == "cnn":
        return DigitsCNN()
    if name == "mlp":
        return WideMLP()
    if name == "lm":
        return TinyLM(**kw)
    raise ValueError(f"unknown model {name!r}; known: cnn, mlp, lm")
