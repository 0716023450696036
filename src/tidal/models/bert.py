"""BERT encoders (Devlin et al. 2019) of the sizes of Turc et al. 2019, in plain torch.

Input: int64 token ids (seq_len,), 0 = padding (the attention mask is derived from it);
output: 2 logits (a sequence-classification head on the [CLS] token, as for SST-2).
Weights are random (latency-faithful); accuracies are the published ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class BertConfig:
    """Layers L, hidden size H, attention heads A (intermediate = 4H), as in the BERT papers."""

    layers: int
    hidden: int
    heads: int
    vocab: int = 30522
    max_positions: int = 512
    num_labels: int = 2


class BertLayer(nn.Module):
    """Post-LN transformer encoder layer: self-attention, then a GELU feed-forward."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.hidden // cfg.heads
        self.hidden = cfg.hidden
        self.scale = 1.0 / math.sqrt(self.head_dim)
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)
        self.ln1 = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.ff1 = nn.Linear(cfg.hidden, 4 * cfg.hidden)
        self.ff2 = nn.Linear(4 * cfg.hidden, cfg.hidden)
        self.ln2 = nn.LayerNorm(cfg.hidden, eps=1e-12)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x).unflatten(-1, (3, self.heads, self.head_dim)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.matmul(q, k.transpose(-1, -2)) * self.scale + bias
        ctx = torch.matmul(torch.softmax(att, dim=-1), v).transpose(1, 2).flatten(2)
        x = self.ln1(x + self.out(ctx))
        return self.ln2(x + self.ff2(nn.functional.gelu(self.ff1(x))))


class BertClassifier(nn.Module):
    """Embeddings + L encoder layers + tanh pooler + linear classifier."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab, cfg.hidden)
        self.pos = nn.Embedding(cfg.max_positions, cfg.hidden)
        self.typ = nn.Embedding(2, cfg.hidden)
        self.ln = nn.LayerNorm(cfg.hidden, eps=1e-12)
        self.layers = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))
        self.pooler = nn.Linear(cfg.hidden, cfg.hidden)
        self.cls = nn.Linear(cfg.hidden, cfg.num_labels)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = ids.shape[1]
        pos = torch.arange(s, device=ids.device).unsqueeze(0)
        x = self.ln(self.tok(ids) + self.pos(pos) + self.typ(torch.zeros_like(ids)))
        # Additive mask: 0 for tokens, -10000 for padding (id 0), broadcast over heads/queries.
        bias = (ids == 0).to(x.dtype)[:, None, None, :] * -10000.0
        for layer in self.layers:
            x = layer(x, bias)
        return self.cls(torch.tanh(self.pooler(x[:, 0])))


BERT_CONFIGS: dict[str, BertConfig] = {
    "bert-tiny": BertConfig(2, 128, 2),
    "bert-mini": BertConfig(4, 256, 4),
    "bert-small": BertConfig(4, 512, 8),
    "bert-medium": BertConfig(8, 512, 8),
    "bert-base": BertConfig(12, 768, 12),
}


def build_bert(name: str, seed: int = 0) -> nn.Module:
    """The BERT classifier `name` with deterministic random weights, in eval mode."""
    torch.manual_seed(seed)
    return BertClassifier(BERT_CONFIGS[name]).eval()
