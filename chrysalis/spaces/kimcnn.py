"""Kim (2014) CNN for sentence classification.

    embedding (vocab, 300, padding_idx 0) -> parallel Conv1d widths 3, 4, 5 (100 filters each)
    -> ReLU -> max over time -> concat (300) -> dropout 0.5 -> linear classes

The convs run over the sequence axis with the embedding dimensions as channels, so as K-ops
they are 1-D K-operations on sequences of length `seq_len` (the token ids are padded/cut to a
fixed length by the dataset).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ._info import text_shape


class KimCNN(nn.Module):
    """Kim's CNN-rand (embeddings learnt from scratch).

    Args:
        vocab_size: number of token ids (id 0 is padding).
        num_classes: outputs.
        embed_dim: embedding dimension (300).
        num_filters: filters per width (100).
        widths: conv widths (3, 4, 5).
        dropout: dropout before the classifier (0.5).
    """

    def __init__(
        self,
        vocab_size: int,
        num_classes: int,
        *,
        embed_dim: int = 300,
        num_filters: int = 100,
        widths: Sequence[int] = (3, 4, 5),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.widths = tuple(int(w) for w in widths)
        if not self.widths:
            raise ValueError("KimCNN needs at least one conv width")
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)  # (B, L) -> (B, L, D)
        self.convs = nn.ModuleList(
            nn.Conv1d(embed_dim, num_filters, w) for w in self.widths  # (B, D, L) -> (B, F, L-w+1)
        )
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_filters * len(self.widths), num_classes)  # (B, F*k) -> (B, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.shape[-1] < max(self.widths):
            raise ValueError(
                f"KimCNN needs sequences of at least {max(self.widths)} tokens, got {tokens.shape[-1]}"
            )
        x = self.embedding(tokens).transpose(1, 2)  # (B, L, D) -> (B, D, L)
        pooled = [self.act(conv(x)).amax(dim=-1) for conv in self.convs]  # k x (B, F)
        x = self.dropout(torch.cat(pooled, dim=1))  # (B, F*k)
        return self.fc(x)  # (B, classes)


def build_kimcnn(info: Any, **options: Any) -> KimCNN:
    """KimCNN for a text dataset's `info`; `options`: embed_dim, num_filters, widths, dropout."""
    seq_len, vocab = text_shape(info, "kimcnn")
    model = KimCNN(vocab, int(info.num_classes), **options)
    if seq_len < max(model.widths):
        raise ValueError(f"kimcnn needs seq_len >= {max(model.widths)} (the widest conv), got {seq_len}")
    return model
