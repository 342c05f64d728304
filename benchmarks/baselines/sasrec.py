"""SASRec (Kang & McAuley, ICDM 2018) trained with full-softmax cross-entropy ("SASRec+",
Klenitskiy & Vasilev, RecSys 2023): item ID embeddings, learned positions, causal
self-attention blocks; every position of each training sequence predicts the next item over
the whole catalog, and the output layer is the item embedding (tied).

Sequences are the last ``maxlen`` items, left-padded, so the newest item always sits at the
last position; a user is scored from the output at that position. Training early-stops on
validation NDCG@10 (the target ranked against the full catalog minus the user's items) and
keeps the best epoch's weights; the refit on train + validation trains for that many epochs.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.baselines.base import Floats, Rows, Scorer, TrainData, Validation
from metrics.heldout import ndcg_at_k_from_ranks, target_ranks
from retrieval.training import EarlyStopping


class SASRecNet(nn.Module):
    """Embeddings, pre-norm causal Transformer blocks, a final norm; logits against the
    item table. Item ``c`` is row ``c + 1`` (row 0 is padding)."""

    def __init__(
        self, n_items: int, hidden: int, blocks: int, heads: int, dropout: float, maxlen: int
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.heads = heads
        self.items = nn.Embedding(n_items + 1, hidden, padding_idx=0)
        self.positions = nn.Embedding(maxlen, hidden)
        self.drop = nn.Dropout(dropout)
        layer = nn.TransformerEncoderLayer(
            hidden,
            heads,
            dim_feedforward=hidden,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.blocks = nn.TransformerEncoder(layer, blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        nn.init.normal_(self.items.weight, std=hidden**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """(batch, length) padded item rows -> (batch, length, hidden) states."""
        length = seq.shape[1]
        pos = torch.arange(length, device=seq.device)
        x = self.items(seq) * math.sqrt(self.hidden) + self.positions(pos)[None]
        x = self.drop(x * (seq > 0).unsqueeze(-1))
        # Key j is visible to query i when j <= i and j is an item; a padding query sees
        # itself, so no row of the mask is empty (an empty row would give NaN).
        causal = torch.ones(length, length, dtype=torch.bool, device=seq.device).tril()
        visible = causal[None] & (seq > 0)[:, None, :]
        visible |= torch.eye(length, dtype=torch.bool, device=seq.device)[None]
        mask = (~visible).repeat_interleave(self.heads, dim=0)
        out: torch.Tensor = self.norm(self.blocks(x, mask=mask))
        return out

    def logits(self, states: torch.Tensor) -> torch.Tensor:
        """Scores of every item for each state (padding excluded)."""
        return states @ self.items.weight[1:].T


def _window(seq: np.ndarray, length: int) -> np.ndarray:
    """The last ``length`` entries of ``seq`` as item rows (+1), left-padded with 0."""
    out = np.zeros(length, dtype=np.int64)
    tail = seq[-length:] + 1 if len(seq) else seq
    if len(tail):
        out[length - len(tail) :] = tail
    return out


class SASRecScorer(Scorer):
    """SASRec with full-softmax cross-entropy, early-stopped on validation NDCG@10."""

    name = "sasrec"

    def __init__(
        self,
        hidden: int = 64,
        blocks: int = 2,
        heads: int = 1,
        dropout: float = 0.2,
        maxlen: int = 200,
        epochs: int = 200,
        patience: int = 10,
        batch_size: int = 64,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> None:
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be a multiple of heads ({heads})")
        if min(hidden, blocks, heads, maxlen, epochs, batch_size) < 1 or not 0 <= dropout < 1:
            raise ValueError("SASRec sizes must be >= 1 and dropout in [0, 1)")
        self.params = {
            "hidden": hidden,
            "blocks": blocks,
            "heads": heads,
            "dropout": dropout,
            "maxlen": maxlen,
            "epochs": epochs,
            "patience": patience,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
        }
        self.net: SASRecNet | None = None
        self.data: TrainData | None = None
        self.best_epoch = 0
        self.history: list[dict[str, float]] = []
        self.train_seconds = 0.0

    def refit_params(self) -> dict[str, Any]:
        """The chosen settings for exactly the epochs validation picked."""
        return {**self.params, "epochs": max(1, self.best_epoch or self.params["epochs"])}

    def _pairs(self, data: TrainData) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-item targets per user with at least two items."""
        length = int(self.params["maxlen"])
        inputs, targets = [], []
        for seq in data.sequences:
            if len(seq) >= 2:
                window = seq[-(length + 1) :]
                inputs.append(_window(window[:-1], length))
                targets.append(_window(window[1:], length))
        if not inputs:
            raise ValueError("SASRec needs at least one user with two or more interactions")
        return torch.from_numpy(np.stack(inputs)), torch.from_numpy(np.stack(targets))

    def fit(self, data: TrainData, validation: Validation | None = None) -> SASRecScorer:
        p = self.params
        started = time.perf_counter()
        torch.manual_seed(int(p["seed"]))
        rng = np.random.default_rng(int(p["seed"]))
        self.data = data
        net = SASRecNet(
            data.n_items, p["hidden"], p["blocks"], p["heads"], p["dropout"], p["maxlen"]
        )
        self.net = net
        inputs, targets = self._pairs(data)
        optimiser = torch.optim.Adam(net.parameters(), lr=float(p["lr"]), betas=(0.9, 0.98))
        stopper: EarlyStopping[dict[str, Any]] = EarlyStopping(int(p["patience"]))
        self.history = []
        for epoch in range(1, int(p["epochs"]) + 1):
            net.train()
            order = rng.permutation(len(inputs))
            total, count = 0.0, 0
            for start in range(0, len(order), int(p["batch_size"])):
                batch = torch.from_numpy(order[start : start + int(p["batch_size"])])
                seq, tgt = inputs[batch], targets[batch]
                states = net(seq)
                keep = tgt > 0
                loss = nn.functional.cross_entropy(net.logits(states[keep]), tgt[keep] - 1)
                optimiser.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                optimiser.step()
                total += float(loss.detach()) * int(keep.sum())
                count += int(keep.sum())
            record = {"epoch": epoch, "loss": total / max(count, 1)}
            if validation is not None:
                record["ndcg@10"] = self.validation_ndcg10(validation)
                if stopper.update(
                    record["ndcg@10"], epoch, lambda: copy.deepcopy(net.state_dict())
                ):
                    self.history.append(record)
                    break
            self.history.append(record)
        if stopper.snapshot is not None:
            net.load_state_dict(stopper.snapshot)
            self.best_epoch = stopper.epoch or int(p["epochs"])
        else:
            self.best_epoch = int(p["epochs"])
        self.train_seconds = time.perf_counter() - started
        return self

    @torch.no_grad()
    def scores(self, user_rows: Rows) -> Floats:
        assert self.net is not None and self.data is not None
        self.net.eval()
        length = int(self.params["maxlen"])
        seq = np.stack([_window(self.data.sequences[r], length) for r in user_rows.tolist()])
        states = self.net(torch.from_numpy(seq))[:, -1]
        out = self.net.logits(states).numpy().astype(np.float32)
        out[seq[:, -1] == 0] = 0.0  # no history: no preference
        return out

    def validation_ndcg10(self, validation: Validation) -> float:
        """NDCG@10 of the validation targets, the user's training items excluded."""
        assert self.data is not None
        ranks = []
        for start in range(0, len(validation.rows), 256):
            rows = validation.rows[start : start + 256]
            block = self.scores(rows)
            seen = self.data.matrix[rows].tocoo()
            block[seen.row, seen.col] = -np.inf
            ranks.append(target_ranks(block, validation.targets[start : start + 256]))
        return float(ndcg_at_k_from_ranks(np.concatenate(ranks), 10))
