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
flat bonus to every rare item. The weight is chosen on validation by
:func:`retrieval.sequential_train.train_sequential`.

Collaborative block: the GRU reads an ordered window, a matrix factorisation the whole history
as a set. With ``collab_weight > 0`` items also carry their implicit-ALS factors ``y_i`` (zeros
for items never seen in training) and users ``s_u * x_u``, ``x_u`` being ALS's own user step
over the history (:func:`fold_in`: exact, no refit for new users or events) and ``s_u`` the
per-user ratio of the main score's spread over the catalog to the ALS score's, times the weight:
a per-user z-score blend inside one inner-product search.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from retrieval.als import als_gram, fold_in
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

    def reduced(self) -> SequentialConfig:
        """The CI size (``--quick``): 3 epochs, everything else as measured."""
        return replace(self, epochs=QUICK_EPOCHS)


QUICK_EPOCHS = 3
"""Epochs of ``--quick`` runs: enough to exercise every step, far too few to mean anything."""


COV_BLOCK = 65_536
"""Rows a block of :func:`covariance` reads in float64."""


def covariance(matrix: npt.NDArray[np.floating], block: int = COV_BLOCK) -> npt.NDArray[np.float64]:
    """``np.cov(matrix, rowvar=False, bias=True)`` in float64, two passes over blocks of rows:
    no float64 copy of the whole matrix (4.6 GB for a million 576-wide rows, at every
    worker's start)."""
    n, d = matrix.shape
    if n == 0:
        return np.zeros((d, d))
    mean = np.zeros(d)
    for start in range(0, n, block):
        mean += matrix[start : start + block].astype(np.float64).sum(axis=0)
    mean /= n
    out = np.zeros((d, d))
    for start in range(0, n, block):
        part = matrix[start : start + block].astype(np.float64) - mean
        out += part.T @ part
    out /= n
    return out


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
        import torch

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

    def bind_text(self, text_vectors: ItemVectors) -> SequentialTower:
        """Binds the tower to the indexed vectors of items given their text vectors (what an
        index build would index: :meth:`item_transform`)."""
        ids = text_vectors.ids
        return self.bind(ItemVectors(ids, self.item_transform(ids, text_vectors.matrix)))

    def bind(self, item_vectors: ItemVectors) -> SequentialTower:
        """Sets the indexed item vectors users are read from (the index's own)."""
        if item_vectors.dim != self.dim:
            raise ValueError(f"item vectors have {item_vectors.dim} dims, the tower {self.dim}")
        self.item_vectors = item_vectors
        # Views of the indexed vectors, not copies (a serving worker holds them once): the
        # learned part, and the text part, rescaled to unit length as it is read.
        self._learned = item_vectors.with_matrix(item_vectors.matrix[:, : self.cfg.dim])
        if self.cfg.cold_blend > 0:
            text = item_vectors.with_matrix(item_vectors.matrix[:, self.cfg.dim : self.main_dim])
            self._text = MeanItemsTower(text, n_recent=self.cfg.blend_recent, unit_rows=True)
        if self.collab_dim:  # score spreads over the indexed catalog, per block
            self._main_cov = covariance(item_vectors.matrix[:, : self.main_dim])
            self._collab_cov = covariance(item_vectors.matrix[:, self.main_dim :])
        return self

    def embed(self, users: Sequence[UserState]) -> Matrix:
        if self._learned is None:
            raise ValueError("bind() the tower to its item vectors first")
        import torch

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
        import torch
        from safetensors.torch import save_file

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
        from retrieval.sequential_net import SeqNet

        net = SeqNet(text_dim, len(spec["item_rows"]), cfg.dim, cfg.use_ids)
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
