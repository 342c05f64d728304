"""A trained sequential user tower over cached item vectors (learning in minutes on a CPU).

Items: ``adaptor(text vector) + ID vector`` (a linear map 384 -> d with LayerNorm, plus a learned
per-item vector that is dropped out during training so the text path stays strong for new and
rare items; an item unseen in training has no ID vector and is placed by its text alone).
Users: a GRU over the adapted vectors of their last ``max_len`` items. Scores are cosine /
temperature with a full softmax over the catalog, trained on next-item prediction at every
position of each training sequence (the sentence-transformer stays frozen; its vectors come
from the Redis cache).

The index holds the item side for every catalog item (``IndexBuild(transform=...)``), so a
nightly build keeps working and new items get a vector from their text.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from catalog.text import HistoryEvent
from retrieval.towers import UserState, UserTower
from retrieval.vectors import ItemVectors, normalize

log = logging.getLogger(__name__)
Matrix = npt.NDArray[np.float32]


@dataclass(frozen=True)
class SequentialConfig:
    """Hyperparameters (saved with the tower).

    Attributes:
        dim: width of the learned space.
        max_len: most recent items the GRU reads.
        use_ids: learn per-item ID vectors beside the text adaptor.
        id_dropout: probability of zeroing an item's ID vector in training.
        temperature: softmax temperature over cosine scores.
        lr, weight_decay, batch_size, epochs, patience: optimisation (Adam, early stopping on
            validation Recall@10).
        seed: seeds torch and numpy.
    """

    dim: int = 64
    max_len: int = 50
    use_ids: bool = True
    id_dropout: float = 0.3
    temperature: float = 0.07
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 60
    patience: int = 5
    seed: int = 0


def _torch() -> Any:
    import torch

    return torch


class _Net:  # built lazily so importing this module does not import torch
    @staticmethod
    def make(text_dim: int, n_items: int, cfg: SequentialConfig) -> Any:
        torch = _torch()
        nn = torch.nn

        class SeqNet(nn.Module):  # type: ignore[misc,name-defined]
            def __init__(self) -> None:
                super().__init__()
                self.adaptor = nn.Sequential(nn.Linear(text_dim, cfg.dim), nn.LayerNorm(cfg.dim))
                self.ids = (
                    nn.Embedding(n_items + 1, cfg.dim, padding_idx=0) if cfg.use_ids else None
                )
                self.gru = nn.GRU(cfg.dim, cfg.dim, batch_first=True)
                self.out = nn.Linear(cfg.dim, cfg.dim)

            def items(self, text: Any, id_rows: Any, drop: float = 0.0) -> Any:
                vec = self.adaptor(text)
                if self.ids is not None:
                    idv = self.ids(id_rows)
                    if drop > 0:
                        keep = (torch.rand(idv.shape[0], 1) >= drop).to(idv.dtype)
                        idv = idv * keep
                    vec = vec + idv
                return torch.nn.functional.normalize(vec, dim=-1)

            def users(self, seq_vectors: Any) -> Any:
                hidden, _ = self.gru(seq_vectors)
                return torch.nn.functional.normalize(self.out(hidden), dim=-1)

        return SeqNet()


class SequentialTower(UserTower):
    """The trained tower: ``item_transform`` for index builds, ``embed`` for users.

    Args:
        net: the trained network.
        config: its hyperparameters.
        item_rows: item id -> ID-vector row (1-based; 0 = no ID vector).
        item_vectors: the indexed (learned-space) item vectors the GRU reads; set with
            :meth:`bind` (e.g. from a published index version).
    """

    name: ClassVar[str] = "sequential"

    def __init__(
        self, net: Any, config: SequentialConfig, item_rows: Mapping[str, int], text_dim: int
    ) -> None:
        self.net = net.eval()
        self.cfg = config
        self.item_rows = dict(item_rows)
        self.text_dim = text_dim
        self.item_vectors: ItemVectors | None = None

    @property
    def dim(self) -> int:
        return self.cfg.dim

    def item_transform(self, ids: Sequence[str], text_vectors: Matrix) -> Matrix:
        """Learned-space vectors for items (text vectors from the frozen encoder)."""
        torch = _torch()
        rows = torch.tensor([self.item_rows.get(i, 0) for i in ids], dtype=torch.long)
        with torch.inference_mode():
            out = self.net.items(torch.from_numpy(np.ascontiguousarray(text_vectors)), rows)
        vectors: Matrix = out.numpy().astype(np.float32)
        return vectors

    def bind(self, item_vectors: ItemVectors) -> SequentialTower:
        """Sets the learned-space item vectors users are read from (the index's own)."""
        if item_vectors.dim != self.cfg.dim:
            raise ValueError(f"item vectors have {item_vectors.dim} dims, the tower {self.cfg.dim}")
        self.item_vectors = item_vectors
        return self

    def embed(self, users: Sequence[UserState]) -> Matrix:
        if self.item_vectors is None:
            raise ValueError("bind() the tower to its item vectors first")
        torch = _torch()
        out = np.zeros((len(users), self.dim), dtype=np.float32)
        for n, user in enumerate(users):
            events = sorted(user.history, key=lambda e: e.timestamp)[-self.cfg.max_len :]
            rows = self.item_vectors.rows([e.item_id for e in events])
            rows = rows[rows >= 0]
            if len(rows) == 0:
                continue
            seq = torch.from_numpy(self.item_vectors.matrix[rows][None, :, :])
            with torch.inference_mode():
                out[n] = self.net.users(seq)[0, -1].numpy()
        return normalize(out)

    def config(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "text_dim": self.text_dim}

    def save(self, folder: str | Path) -> Path:
        """``tower.json`` (config, item rows) and ``model.safetensors``."""
        from safetensors.torch import save_file

        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.contiguous() for k, v in self.net.state_dict().items()},
            str(root / "model.safetensors"),
        )
        path = root / "tower.json"
        path.write_text(
            json.dumps(
                {"name": self.name, "config": self.config(), "item_rows": self.item_rows},
                sort_keys=True,
            )
        )
        return path

    @classmethod
    def load(cls, folder: str | Path) -> SequentialTower:
        """Reads a tower saved by :meth:`save` (safetensors, no pickle)."""
        from safetensors.torch import load_file

        root = Path(folder)
        spec = json.loads((root / "tower.json").read_text())
        if spec.get("name") != cls.name:
            raise ValueError(f"{root / 'tower.json'}: not a sequential tower")
        cfg = SequentialConfig(**spec["config"]["config"])
        text_dim = int(spec["config"]["text_dim"])
        net = _Net.make(text_dim, len(spec["item_rows"]), cfg)
        net.load_state_dict(load_file(str(root / "model.safetensors")))
        return cls(net, cfg, spec["item_rows"], text_dim)


def _sequences(
    histories: Mapping[str, Sequence[HistoryEvent]], pos: Mapping[str, int], max_len: int
) -> list[list[int]]:
    """Each user's item positions in time order, cut from the end into windows of
    ``max_len + 1`` (so long histories train on all their events, not just the last ones)."""
    out = []
    for events in histories.values():
        seq = [
            pos[e.item_id] for e in sorted(events, key=lambda e: e.timestamp) if e.item_id in pos
        ]
        end = len(seq)
        while end >= 2:
            out.append(seq[max(0, end - max_len - 1) : end])
            end -= max_len
    return out


def train_sequential(
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    cfg: SequentialConfig | None = None,
    *,
    train_items: set[str] | None = None,
    progress: bool = True,
) -> tuple[SequentialTower, dict[str, Any]]:
    """Trains on next-item prediction over the training histories.

    Args:
        text_vectors: frozen text vectors of every catalog item.
        train: user -> training events.
        validation: user -> held-out validation item (early stopping on Recall@10, seen
            training items excluded); empty: train ``cfg.epochs`` epochs and keep the last
            (the refit on train + validation).
        cfg: hyperparameters.
        train_items: items that get an ID vector (default: those in ``train``).
        progress: log each epoch.

    Returns:
        The tower (bound to its catalog item vectors) and a training card.
    """
    torch = _torch()
    cfg = cfg or SequentialConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    ids = text_vectors.ids
    pos = {i: n for n, i in enumerate(ids)}
    seen_items = (
        train_items
        if train_items is not None
        else {e.item_id for events in train.values() for e in events}
    )
    item_rows = {i: n + 1 for n, i in enumerate(sorted(seen_items & set(pos)))}
    id_index = torch.tensor([item_rows.get(i, 0) for i in ids], dtype=torch.long)
    text = torch.from_numpy(np.ascontiguousarray(text_vectors.matrix))
    net = _Net.make(text_vectors.dim, len(item_rows), cfg)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    seqs = _sequences(train, pos, cfg.max_len)
    if not seqs:
        raise ValueError("no training sequences: users need at least two training items")
    val_users = [u for u in validation if u in train and validation[u] in pos]
    best: tuple[float, dict[str, Any]] = (-1.0, copy.deepcopy(net.state_dict()))
    history: list[dict[str, float]] = []
    stale = 0
    best_epoch = cfg.epochs
    started = time.perf_counter()
    for epoch in range(cfg.epochs):
        net.train()
        order = rng.permutation(len(seqs))
        losses = []
        for start in range(0, len(order), cfg.batch_size):
            batch = [seqs[i] for i in order[start : start + cfg.batch_size]]
            width = max(len(s) for s in batch) - 1
            inputs = torch.zeros((len(batch), width), dtype=torch.long)
            targets = torch.full((len(batch), width), -100, dtype=torch.long)
            for b, seq in enumerate(batch):
                n = len(seq) - 1
                inputs[b, :n] = torch.tensor(seq[:-1])
                targets[b, :n] = torch.tensor(seq[1:])
            items = net.items(text, id_index, drop=cfg.id_dropout)  # all catalog items
            users = net.users(items[inputs])
            logits = users @ items.T / cfg.temperature
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        if not val_users:  # no validation: a fixed number of epochs, keep the last
            history.append({"epoch": epoch + 1, "loss": float(np.mean(losses))})
            best = (float("nan"), copy.deepcopy(net.state_dict()))
            continue
        tower = SequentialTower(net, cfg, item_rows, text_vectors.dim)
        tower.bind(ItemVectors(ids, tower.item_transform(ids, text_vectors.matrix)))
        recall = _val_recall(tower, train, validation, val_users)
        net.train()
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "recall@10": recall})
        if progress:
            log.info(
                "sequential tower epoch %d: loss %.4f, validation Recall@10 %.4f",
                epoch + 1,
                np.mean(losses),
                recall,
            )
        if recall > best[0]:
            best, stale, best_epoch = (recall, copy.deepcopy(net.state_dict())), 0, epoch + 1
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    net.load_state_dict(best[1])
    net.eval()
    tower = SequentialTower(net, cfg, item_rows, text_vectors.dim)
    tower.bind(ItemVectors(ids, tower.item_transform(ids, text_vectors.matrix)))
    card = {
        "config": asdict(cfg),
        "epochs": history,
        "best_recall@10": best[0],
        "best_epoch": best_epoch if val_users else len(history),
        "train_seconds": time.perf_counter() - started,
        "sequences": len(seqs),
        "id_items": len(item_rows),
    }
    return tower, card


def _val_recall(
    tower: SequentialTower,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    k: int = 10,
) -> float:
    """Recall@k of the held-out item over the full catalog, training items excluded."""
    assert tower.item_vectors is not None
    vectors = tower.embed([UserState(u, {}, train[u]) for u in users])
    scores = vectors @ tower.item_vectors.matrix.T
    hits = 0
    for n, u in enumerate(users):
        seen = tower.item_vectors.rows([e.item_id for e in train[u]])
        scores[n, seen[seen >= 0]] = -np.inf
        target = tower.item_vectors.rows([validation[u]])[0]
        rank = int((scores[n] > scores[n, target]).sum())
        hits += rank < k
    return hits / max(1, len(users))
