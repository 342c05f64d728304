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

Cold items: next-item training ranks rarely seen items poorly, where the frozen text model is
at its best. With ``cold_blend > 0`` an indexed item is ``[learned vector, w_i * text vector]``
and a user ``[GRU vector, z_u - z_mean]`` (``z_u``: mean of the user's recent liked text
vectors; ``z_mean``: its average over the training users), so one inner-product search scores
``cos_learned + w_i * (z_u - z_mean) . x_i`` with ``w_i = cold_blend * cold_scale /
(cold_scale + n_i)`` (``n_i`` = the item's training interactions; 0 for new items). Centering
makes the text term say "closer to this user than to the average user" rather than adding a
flat bonus to every rare item. The weight is chosen on validation by :func:`train_sequential`.

Collaborative block: the GRU reads an ordered window, a matrix factorisation the whole history
as a set. With ``collab_weight > 0`` items also carry their implicit-ALS factors ``y_i`` (zeros
for items never seen in training) and users ``s_u * x_u``, ``x_u`` being ALS's own user step
over the history (:func:`fold_in`: exact, no refit for new users or events) and ``s_u`` the
per-user ratio of the main score's spread over the catalog to the ALS score's, times the weight:
a per-user z-score blend inside one inner-product search.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from catalog.text import HistoryEvent
from catalog.thresholds import COLD_ITEM_THRESHOLD
from metrics import ndcg_at_k_from_ranks, recall_at_k_from_ranks, target_ranks
from retrieval.towers import MeanItemsTower, UserState, UserTower
from retrieval.vectors import ItemVectors, normalize

log = logging.getLogger(__name__)
Matrix = npt.NDArray[np.float32]
EMBED_BATCH = 1024
"""Users per GRU call in :meth:`SequentialTower.embed` (bounds its memory)."""
COLLAB_KEY = "collab.item_factors"
"""The ALS item factors' name in ``model.safetensors`` (beside the network's weights)."""


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
        cold_blend: weight of the frozen text similarity for an item never seen in training
            (0: off; see the module docstring).
        cold_scale: training interactions at which an item's blend weight halves.
        blend_recent: recent liked items pooled for the user's text vector.
        blend_grid: ``cold_blend`` values tried on validation after training (empty: keep
            ``cold_blend``): the best validation NDCG@10 among the weights whose Recall@100 on
            cold targets (< 5 training interactions) reaches the zero-shot text tower's.
        collab_weight: weight of the collaborative block (0: off): a matrix-factorisation
            score (implicit ALS item factors, the user folded in from their history) added to
            the tower's score after both are standardised over the catalog for that user.
        collab_factors, collab_reg, collab_alpha, collab_iterations: the ALS fit (when
            ``collab_grid`` is searched, the factors/regularisation/alpha come from
            :data:`COLLAB_SETTINGS`, chosen by the ALS score's own validation NDCG@10).
        collab_grid: ``collab_weight`` values tried on validation, jointly with ``blend_grid``
            and under the same cold-recall rule (empty: keep ``collab_weight``).
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
    cold_blend: float = 0.0
    cold_scale: float = 1.0
    blend_recent: int = 5
    blend_grid: tuple[float, ...] = (0.0, 0.4, 0.8, 1.2, 1.6, 2.4, 3.2)
    collab_weight: float = 0.0
    collab_factors: int = 32
    collab_reg: float = 0.01
    collab_alpha: float = 10.0
    collab_iterations: int = 20
    collab_grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)


COLLAB_SETTINGS: tuple[tuple[int, float, float], ...] = tuple(
    (f, r, a) for f in (32, 64, 128) for r in (0.01, 0.1) for a in (1.0, 10.0)
)
"""(factors, regularisation, alpha) of the ALS fits tried on validation for the collaborative
block: the grid the offline evaluation tunes its ALS baseline over."""


def _torch() -> Any:
    import torch

    return torch


@contextlib.contextmanager
def _reuse_freed_memory() -> Iterator[None]:
    """Keeps glibc from handing each large tensor back to the kernel when it is freed.

    Every step allocates the (positions x catalog) logits and their gradient, hundreds of MB
    that glibc serves with ``mmap`` and unmaps on free, so the next step faults in and zeroes
    fresh pages: on ml-latest-small that was 57 s of system time in 65 s for 3 epochs. With
    ``mmap`` off and no trimming the freed blocks are reused (30 s, the same losses; peak
    memory 1.2 -> 2.3 GB). Restored afterwards; a no-op without glibc.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        yield
        return
    m_trim_threshold, m_mmap_max = -1, -4
    mallopt(m_mmap_max, 0)
    mallopt(m_trim_threshold, 2**30)
    try:
        yield
    finally:  # glibc's defaults, and the kept memory back to the kernel
        mallopt(m_mmap_max, 65536)
        mallopt(m_trim_threshold, 128 * 1024)
        libc.malloc_trim(0)


def fit_als(
    histories: Mapping[str, Sequence[HistoryEvent]],
    item_rows: Mapping[str, int],
    cfg: SequentialConfig,
) -> Matrix:
    """Implicit ALS item factors by ID row (row 0, "no ID vector", stays zero).

    The interactions are binary (a repeated event counts once), as in the ALS baseline.
    """
    import scipy.sparse as sp

    rows: list[int] = []
    cols: list[int] = []
    for n, user in enumerate(sorted(histories)):
        known = {item_rows[e.item_id] for e in histories[user] if e.item_id in item_rows}
        rows += [n] * len(known)
        cols += sorted(known)
    matrix = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)),
        shape=(len(histories), len(item_rows) + 1),
    )
    _, factors = implicit_als(
        matrix,
        cfg.collab_factors,
        cfg.collab_reg,
        cfg.collab_alpha,
        cfg.collab_iterations,
        cfg.seed,
    )
    factors[0] = 0.0
    return factors


def implicit_als(
    matrix: Any, factors: int, reg: float, alpha: float, iterations: int, seed: int
) -> tuple[Matrix, Matrix]:
    """(user, item) factors of ``implicit``'s ALS on a (users, items) matrix: the one fit the
    collaborative block and the ALS baseline share, so the block is as strong as the baseline."""
    import implicit
    from threadpoolctl import threadpool_limits

    model = implicit.cpu.als.AlternatingLeastSquares(
        factors=factors,
        regularization=reg,
        alpha=alpha,
        iterations=iterations,
        random_state=seed,
        calculate_training_loss=False,
    )
    with threadpool_limits(1, "blas"):  # implicit's own advice: BLAS threads fight it
        model.fit(matrix.astype(np.float32), show_progress=False)
    return (
        np.array(model.user_factors, dtype=np.float32),
        np.array(model.item_factors, dtype=np.float32),
    )


def als_gram(factors: Matrix, reg: float) -> npt.NDArray[np.float64]:
    """``Y'Y + reg I``: the part of every user's ALS system shared by all users."""
    y = factors.astype(np.float64)
    gram: npt.NDArray[np.float64] = y.T @ y + reg * np.eye(y.shape[1])
    return gram


def fold_in(
    factors: Matrix,
    user_rows: Sequence[Sequence[int]],
    reg: float,
    alpha: float,
    gram: npt.NDArray[np.float64] | None = None,
) -> Matrix:
    """ALS's own user step for each user's item rows (exact least squares, implicit's
    confidence ``alpha`` on interacted items), so a user needs no refit: new users and new
    events are folded in at request time. ``gram``: :func:`als_gram`, when cached."""
    gram = als_gram(factors, reg) if gram is None else gram
    out = np.zeros((len(user_rows), factors.shape[1]), dtype=np.float32)
    known_rows = [sorted({r for r in rows if r > 0}) for rows in user_rows]
    if alpha == 1.0:
        # Unit confidence adds nothing to the Gram matrix: every user solves the same system,
        # so one solve serves them all (the per-user loop cost minutes in pair building).
        users = [n for n, known in enumerate(known_rows) if known]
        if users:
            sums = np.stack([factors[known_rows[n]].astype(np.float64).sum(axis=0) for n in users])
            out[users] = np.linalg.solve(gram, sums.T).T
        return out
    for n, known in enumerate(known_rows):
        if not known:
            continue
        yu = factors[known].astype(np.float64)
        out[n] = np.linalg.solve(gram + (alpha - 1.0) * yu.T @ yu, alpha * yu.sum(axis=0))
    return out


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
        text_dim: width of the frozen text vectors.
        item_counts: item id -> training interactions (for the cold-item blend weight).
        text_center: the average user text vector ``z_mean`` (for the cold-item blend).
        collab: ALS item factors by ID row (for the collaborative block).

    ``item_vectors`` are the indexed item vectors users are read from; set with :meth:`bind`
    (e.g. from a published index version).
    """

    name: ClassVar[str] = "sequential"

    def __init__(
        self,
        net: Any,
        config: SequentialConfig,
        item_rows: Mapping[str, int],
        text_dim: int,
        item_counts: Mapping[str, int] | None = None,
        text_center: npt.ArrayLike | None = None,
        collab: npt.ArrayLike | None = None,
    ) -> None:
        if config.collab_weight > 0 and collab is None:
            raise ValueError("collab_weight > 0 needs the ALS item factors (collab)")
        self.collab = None if collab is None else np.asarray(collab, dtype=np.float32)
        if self.collab is not None and self.collab.shape[0] != len(item_rows) + 1:
            raise ValueError(
                f"collab has {self.collab.shape[0]} rows, expected {len(item_rows) + 1} "
                "(one per ID row, and row 0)"
            )
        self.net = net.eval()
        self.text_center = (
            np.zeros(text_dim, dtype=np.float32)
            if text_center is None
            else np.asarray(text_center, dtype=np.float32).reshape(text_dim)
        )
        self.cfg = config
        self.item_rows = dict(item_rows)
        self.text_dim = text_dim
        self.item_counts = dict(item_counts or {})
        self.item_vectors: ItemVectors | None = None
        self._learned: ItemVectors | None = None
        self._text: MeanItemsTower | None = None
        self._main_cov: npt.NDArray[np.float64] | None = None
        self._collab_cov: npt.NDArray[np.float64] | None = None
        self._gram = None if self.collab is None else als_gram(self.collab, self.cfg.collab_reg)

    @property
    def main_dim(self) -> int:
        """Width of the learned + cold-blend blocks (the collaborative block follows)."""
        return self.cfg.dim + (self.text_dim if self.cfg.cold_blend > 0 else 0)

    @property
    def collab_dim(self) -> int:
        return 0 if self.collab is None or self.cfg.collab_weight <= 0 else self.collab.shape[1]

    @property
    def dim(self) -> int:
        return self.main_dim + self.collab_dim

    def with_blend(self, cold_blend: float, collab_weight: float | None = None) -> SequentialTower:
        """The same network with other blend weights (unbound); ``None`` keeps the
        collaborative weight."""
        weight = self.cfg.collab_weight if collab_weight is None else collab_weight
        return SequentialTower(
            self.net,
            replace(self.cfg, cold_blend=cold_blend, collab_weight=weight),
            self.item_rows,
            self.text_dim,
            self.item_counts,
            self.text_center,
            self.collab,
        )

    def blend_weights(self, ids: Sequence[str]) -> Matrix:
        """``w_i`` per item: large for items rarely or never seen in training."""
        counts = np.array([self.item_counts.get(i, 0) for i in ids], dtype=np.float32)
        weights: Matrix = self.cfg.cold_blend * self.cfg.cold_scale / (self.cfg.cold_scale + counts)
        return weights

    def item_transform(self, ids: Sequence[str], text_vectors: Matrix) -> Matrix:
        """Indexed vectors for items (text vectors from the frozen encoder)."""
        torch = _torch()
        text = np.ascontiguousarray(text_vectors, dtype=np.float32)
        if text.shape[1] != self.text_dim:
            raise ValueError(f"text vectors have {text.shape[1]} dims, the tower {self.text_dim}")
        rows = torch.tensor([self.item_rows.get(i, 0) for i in ids], dtype=torch.long)
        with torch.inference_mode():
            out = self.net.items(torch.from_numpy(text), rows)
        vectors: Matrix = out.numpy().astype(np.float32)
        if self.cfg.cold_blend > 0:
            vectors = np.hstack([vectors, self.blend_weights(ids)[:, None] * normalize(text)])
        if self.collab_dim:
            assert self.collab is not None
            vectors = np.hstack([vectors, self.collab[rows.numpy()]])  # new items: zeros
        return vectors

    def bind(self, item_vectors: ItemVectors) -> SequentialTower:
        """Sets the indexed item vectors users are read from (the index's own)."""
        if item_vectors.dim != self.dim:
            raise ValueError(f"item vectors have {item_vectors.dim} dims, the tower {self.dim}")
        self.item_vectors = item_vectors
        learned = np.ascontiguousarray(item_vectors.matrix[:, : self.cfg.dim])
        self._learned = ItemVectors(item_vectors.ids, learned)
        if self.cfg.cold_blend > 0:  # the text part, rescaled to unit length
            text = normalize(item_vectors.matrix[:, self.cfg.dim : self.main_dim])
            self._text = MeanItemsTower(
                ItemVectors(item_vectors.ids, text), n_recent=self.cfg.blend_recent
            )
        if self.collab_dim:  # score spreads over the indexed catalog, per block
            matrix = item_vectors.matrix.astype(np.float64)
            self._main_cov = np.cov(matrix[:, : self.main_dim], rowvar=False, bias=True)
            self._collab_cov = np.cov(matrix[:, self.main_dim :], rowvar=False, bias=True)
        return self

    def embed(self, users: Sequence[UserState]) -> Matrix:
        if self._learned is None:
            raise ValueError("bind() the tower to its item vectors first")
        torch = _torch()
        out = np.zeros((len(users), self.cfg.dim), dtype=np.float32)
        # Histories of one length run through the GRU together (no padding, so each state is a
        # lone call's up to float rounding); one call per user cost a minute of pair building.
        by_length: dict[int, list[tuple[int, npt.NDArray[np.int64]]]] = {}
        for n, user in enumerate(users):
            events = sorted(user.history, key=lambda e: e.timestamp)[-self.cfg.max_len :]
            rows = self._learned.rows([e.item_id for e in events])
            rows = rows[rows >= 0]
            if len(rows):
                by_length.setdefault(len(rows), []).append((n, rows))
        for members in by_length.values():
            for start in range(0, len(members), EMBED_BATCH):
                chunk = members[start : start + EMBED_BATCH]
                seq = torch.from_numpy(self._learned.matrix[np.stack([r for _, r in chunk])])
                with torch.inference_mode():
                    out[[n for n, _ in chunk]] = self.net.users(seq)[:, -1].numpy()
        out = normalize(out)
        if self._text is None:
            return self._with_collab(users, out)
        text = self._text.embed(users)
        has_text = np.any(text, axis=1)
        text[has_text] -= self.text_center
        text[~np.any(out, axis=1)] = 0.0  # no learned vector -> no vector (popularity fallback)
        return self._with_collab(users, np.hstack([out, text]))

    def _with_collab(self, users: Sequence[UserState], main: Matrix) -> Matrix:
        """Appends the collaborative block, scaled per user so that the ALS score's spread
        over the catalog is ``collab_weight`` times the main score's (a per-user z-score
        blend, done inside the inner product)."""
        if not self.collab_dim:
            return main
        assert self.collab is not None and self._main_cov is not None
        assert self._collab_cov is not None
        rows = [[self.item_rows.get(e.item_id, 0) for e in user.history] for user in users]
        x = fold_in(self.collab, rows, self.cfg.collab_reg, self.cfg.collab_alpha, self._gram)
        spread_main = np.sqrt(((main @ self._main_cov) * main).sum(axis=1).clip(0))
        spread_x = np.sqrt(((x @ self._collab_cov) * x).sum(axis=1).clip(0))
        scale = np.where(spread_x > 0, spread_main / np.maximum(spread_x, 1e-12), 0.0)
        scale[~np.any(main, axis=1)] = 0.0  # the popularity fallback stays a zero vector
        part = (self.cfg.collab_weight * scale)[:, None] * x
        return np.hstack([main, part.astype(np.float32)])

    def config(self) -> dict[str, Any]:
        return {"config": asdict(self.cfg), "text_dim": self.text_dim}

    def save(self, folder: str | Path) -> Path:
        """``tower.json`` (config, item rows) and ``model.safetensors``."""
        from safetensors.torch import save_file

        torch = _torch()
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.contiguous() for k, v in self.net.state_dict().items()}
        if self.collab is not None:
            tensors[COLLAB_KEY] = torch.from_numpy(np.ascontiguousarray(self.collab))
        save_file(tensors, str(root / "model.safetensors"))
        path = root / "tower.json"
        path.write_text(
            json.dumps(
                {
                    "name": self.name,
                    "config": self.config(),
                    "item_rows": self.item_rows,
                    "item_counts": self.item_counts,
                    "text_center": [float(v) for v in self.text_center],
                },
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
        raw = dict(spec["config"]["config"])
        raw["blend_grid"] = tuple(raw.get("blend_grid", ()))
        raw["collab_grid"] = tuple(raw.get("collab_grid", ()))  # absent before the block
        cfg = SequentialConfig(**raw)
        text_dim = int(spec["config"]["text_dim"])
        net = _Net.make(text_dim, len(spec["item_rows"]), cfg)
        tensors = load_file(str(root / "model.safetensors"))
        collab = tensors.pop(COLLAB_KEY, None)
        if collab is None and cfg.collab_weight > 0:
            raise ValueError(
                f"{root / 'model.safetensors'}: no {COLLAB_KEY!r} tensor, but tower.json has "
                f"collab_weight {cfg.collab_weight}"
            )
        net.load_state_dict(tensors)
        return cls(
            net,
            cfg,
            spec["item_rows"],
            text_dim,
            spec.get("item_counts", {}),
            spec.get("text_center"),
            None if collab is None else collab.numpy(),
        )


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
    item_counts = dict(
        Counter(e.item_id for events in train.values() for e in events if e.item_id in pos)
    )
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
    with _reuse_freed_memory():  # the logits of every step: see its docstring
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
            tower = SequentialTower(net, replace(cfg, cold_blend=0.0), item_rows, text_vectors.dim)
            tower.bind(ItemVectors(ids, tower.item_transform(ids, text_vectors.matrix)))
            assert tower.item_vectors is not None
            recall = _val_metrics(tower, tower.item_vectors, train, validation, val_users, {})[
                "recall@10"
            ]
            net.train()
            history.append(
                {"epoch": epoch + 1, "loss": float(np.mean(losses)), "recall@10": recall}
            )
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
    text_unit = ItemVectors(ids, normalize(text_vectors.matrix))
    text_tower = MeanItemsTower(text_unit, n_recent=cfg.blend_recent)
    pooled = text_tower.embed([UserState(u, {}, events) for u, events in train.items()])
    pooled = pooled[np.any(pooled, axis=1)]
    center = pooled.mean(axis=0) if len(pooled) else None
    collab: Matrix | None = None
    als_search: list[dict[str, float]] = []
    searching = bool(val_users) and bool(cfg.blend_grid or cfg.collab_grid)
    if searching and any(w > 0 for w in cfg.collab_grid):
        collab, cfg, als_search = _choose_als(
            text_vectors, train, validation, val_users, item_rows, item_counts, cfg
        )
    elif cfg.collab_weight > 0:
        collab = fit_als(train, item_rows, cfg)
    tower = SequentialTower(net, cfg, item_rows, text_vectors.dim, item_counts, center, collab)
    blends: list[dict[str, float]] = []
    zero_shot: dict[str, float] = {}
    if searching:
        # The blend weights, on validation: the best NDCG@10 among the (cold, collaborative)
        # pairs that keep the zero-shot text tower's Recall@100 on cold targets (else the best
        # cold recall), ties to the smaller weights.
        zero_shot = _val_metrics(text_tower, text_unit, train, validation, val_users, item_counts)
        blends = _blend_search(tower, text_vectors, train, validation, val_users)
        floor = zero_shot["cold_recall@100"]
        keeping = [r for r in blends if r["cold_recall@100"] >= floor or math.isnan(floor)]
        chosen = (
            max(keeping, key=lambda r: (r["ndcg@10"], -r["collab_weight"], -r["cold_blend"]))
            if keeping
            else max(
                blends, key=lambda r: (r["cold_recall@100"], -r["collab_weight"], -r["cold_blend"])
            )
        )
        tower = tower.with_blend(chosen["cold_blend"], chosen["collab_weight"])
        cfg = tower.cfg
        if progress:
            log.info(
                "blend chosen on validation: cold %.2f, collaborative %.2f (NDCG@10 %.4f; "
                "zero-shot %s)",
                cfg.cold_blend,
                cfg.collab_weight,
                chosen["ndcg@10"],
                zero_shot,
            )
    tower.bind(ItemVectors(ids, tower.item_transform(ids, text_vectors.matrix)))
    card = {
        "config": asdict(cfg),
        "epochs": history,
        "best_recall@10": best[0],
        "best_epoch": best_epoch if val_users else len(history),
        "train_seconds": time.perf_counter() - started,
        "blend": blends,
        "blend_zero_shot": zero_shot,
        "collab_als": als_search,
        "sequences": len(seqs),
        "id_items": len(item_rows),
    }
    return tower, card


def _val_metrics(
    tower: UserTower,
    items: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_counts: Mapping[str, int],
    cold_threshold: int = COLD_ITEM_THRESHOLD,
) -> dict[str, float]:
    """Recall@10/100, NDCG@10 of the held-out item over the full catalog (training items
    excluded), and Recall@100 on targets with fewer than ``cold_threshold`` training
    interactions."""
    vectors = tower.embed([UserState(u, {}, train[u]) for u in users])
    return _score_metrics(
        vectors @ items.matrix.T, items, train, validation, users, item_counts, cold_threshold
    )


def _score_metrics(
    scores: npt.NDArray[np.floating[Any]],
    items: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_counts: Mapping[str, int],
    cold_threshold: int = COLD_ITEM_THRESHOLD,
) -> dict[str, float]:
    """:func:`_val_metrics` from a (users, catalog items) score matrix (modified in place)."""
    targets = np.zeros(len(users), dtype=np.int64)
    cold = np.zeros(len(users), dtype=bool)
    for n, u in enumerate(users):
        seen = items.rows([e.item_id for e in train[u]])
        scores[n, seen[seen >= 0]] = -np.inf
        targets[n] = items.rows([validation[u]])[0]
        cold[n] = item_counts.get(validation[u], 0) < cold_threshold
    if not len(users):
        nothing = {"recall@10": 0.0, "ndcg@10": 0.0, "recall@100": 0.0}
        return {**nothing, "cold_recall@100": float("nan"), "cold_users": 0}
    ranks = target_ranks(scores, targets)
    return {
        "recall@10": recall_at_k_from_ranks(ranks, 10),
        "ndcg@10": ndcg_at_k_from_ranks(ranks, 10),
        "recall@100": recall_at_k_from_ranks(ranks, 100),
        "cold_recall@100": recall_at_k_from_ranks(ranks[cold], 100) if cold.any() else math.nan,
        "cold_users": int(cold.sum()),
    }


def _choose_als(
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
    item_rows: Mapping[str, int],
    item_counts: Mapping[str, int],
    cfg: SequentialConfig,
) -> tuple[Matrix, SequentialConfig, list[dict[str, float]]]:
    """The ALS fit of :data:`COLLAB_SETTINGS` whose own score (users folded in) ranks the
    validation items best: the collaborative block is as strong as the tuned ALS baseline."""
    ids = text_vectors.ids
    catalog_rows = np.array([item_rows.get(i, 0) for i in ids])
    user_rows = [[item_rows.get(e.item_id, 0) for e in train[u]] for u in users]
    items = ItemVectors(ids, np.zeros((len(ids), 1), dtype=np.float32))  # ids for the ranks
    best: tuple[float, Matrix, SequentialConfig] | None = None
    rows = []
    for factors, reg, alpha in COLLAB_SETTINGS:
        trial = replace(cfg, collab_factors=factors, collab_reg=reg, collab_alpha=alpha)
        collab = fit_als(train, item_rows, trial)
        x = fold_in(collab, user_rows, reg, alpha)
        metrics = _score_metrics(
            x @ collab[catalog_rows].T, items, train, validation, users, item_counts
        )
        rows.append({"factors": factors, "regularization": reg, "alpha": alpha, **metrics})
        if best is None or metrics["ndcg@10"] > best[0]:
            best = (metrics["ndcg@10"], collab, trial)
    assert best is not None
    return best[1], best[2], rows


def _blend_search(
    tower: SequentialTower,
    text_vectors: ItemVectors,
    train: Mapping[str, Sequence[HistoryEvent]],
    validation: Mapping[str, str],
    users: Sequence[str],
) -> list[dict[str, float]]:
    """Validation metrics of every (cold blend, collaborative weight) pair of the grids.

    Each block's scores are computed once and combined per pair exactly as the bound tower's
    inner product combines them (the per-user spread of each block over the catalog)."""
    cfg = tower.cfg
    ids = text_vectors.ids
    states = [UserState(u, {}, train[u]) for u in users]
    full = tower.with_blend(1.0, 0.0)  # learned + text blocks; the ALS block comes below
    indexed = full.item_transform(ids, text_vectors.matrix)
    full.bind(ItemVectors(ids, indexed))
    users_full = full.embed(states)
    d = cfg.dim
    learned = users_full[:, :d] @ indexed[:, :d].T
    text = users_full[:, d:] @ normalize(text_vectors.matrix).T  # (z_u - z_mean) . x_i
    unit = full.blend_weights(ids)  # w_i at cold_blend 1
    collab = None
    if tower.collab is not None:
        rows = [[tower.item_rows.get(e.item_id, 0) for e in s.history] for s in states]
        x = fold_in(tower.collab, rows, cfg.collab_reg, cfg.collab_alpha)
        collab = x @ tower.collab[[tower.item_rows.get(i, 0) for i in ids]].T
    items = ItemVectors(ids, np.zeros((len(ids), 1), dtype=np.float32))
    out = []
    for weight in cfg.collab_grid or (cfg.collab_weight,):
        for blend in cfg.blend_grid or (cfg.cold_blend,):
            main = learned + blend * unit[None, :] * text
            scores = main
            if weight > 0 and collab is not None:
                spread = collab.std(axis=1, keepdims=True)
                scale = np.where(spread > 0, main.std(axis=1, keepdims=True) / spread, 0.0)
                scores = main + weight * scale * collab
            metrics = _score_metrics(
                scores, items, train, validation, users, dict(tower.item_counts)
            )
            out.append({"cold_blend": blend, "collab_weight": weight, **metrics})
    return out
