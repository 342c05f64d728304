"""The binary reranker's validation fusion: an order fitted for ranking, a probability for likes.

One logit serves both uses of the score: ``alpha * s(item) + u . user_features + b``. The
ranking part ``s`` (the cross-encoder's text logit and the item-level features: retrieval score,
popularity, item mean rating) is fitted with a softmax over validation candidate lists that
hold the held-out item; then ``alpha > 0``, ``u`` and ``b`` are fitted with binary cross-entropy
on the held-out interactions' like/dislike labels. User-level features are constant within a
user's list and ``alpha > 0`` keeps the order of ``s``, so calibrating the probability cannot cost
ranking quality (a joint fit of both objectives on shared weights traded one for the other:
docs/reranking.md).

The ranking weights are shrunk toward "the retrieval score alone" (its scale fitted first) by an
L2 strength chosen by cross-validation over the lists, with the prior itself as the most shrunk
candidate and the one-standard-error rule (the most shrunk candidate within one standard error
of the best cross-validated loss), so that with few lists, or features that carry nothing the
lists can measure, the fusion keeps the first stage's order exactly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # torch loads only when a fusion is fitted
    from torch import Tensor

LAMBDAS = (0.003, 0.03, 0.3, 3.0)
"""L2 strengths toward the prior tried by cross-validation (standardised inputs, mean list loss)."""


@dataclass(frozen=True)
class Fusion:
    """Raw-unit weights of the fused logit, ``x @ weights + bias`` over the columns.

    Attributes:
        columns: the input names (``text`` first, then the features).
        weights: one weight per column, in the columns' raw units.
        bias: the intercept.
        record: what was fitted and chosen (for the model card).
    """

    columns: tuple[str, ...]
    weights: npt.NDArray[np.float64]
    bias: float
    record: dict[str, Any]

    def logits(self, x: npt.NDArray[np.floating[Any]]) -> npt.NDArray[np.float64]:
        """Fused logits for rows of raw column values."""
        return np.asarray(x, dtype=np.float64) @ self.weights + self.bias


def _lbfgs(params: list[Tensor], closure: Callable[[], Tensor], iterations: int = 100) -> None:
    import torch

    opt = torch.optim.LBFGS(params, max_iter=iterations, line_search_fn="strong_wolfe")

    def step() -> Tensor:
        opt.zero_grad()
        loss = closure()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    opt.step(step)  # type: ignore[no-untyped-call]


def _list_loss(scores: Tensor, mask: Tensor, target: Tensor) -> Tensor:
    """Mean softmax cross-entropy of the target over each (padded) list."""
    import torch

    masked = scores.masked_fill(~mask, float("-inf"))
    return (torch.logsumexp(masked, 1) - scores.gather(1, target[:, None])[:, 0]).mean()


def _fit_rank(z: Tensor, mask: Tensor, target: Tensor, prior: Tensor, lam: float) -> Tensor:
    """Ranking weights over standardised item-level columns, L2-shrunk toward ``prior``."""

    w = prior.clone().requires_grad_(True)

    def closure() -> Tensor:
        return _list_loss(z @ w, mask, target) + lam * (w - prior).square().sum()

    _lbfgs([w], closure)
    return w.detach()


def _fit_probability(s_l: Tensor, zu_l: Tensor, y: Tensor) -> tuple[float, Tensor, float]:
    """``alpha`` (> 0, so the order of ``s`` is kept), the user-level weights ``u`` and the
    bias ``b`` of P(like) = sigmoid(alpha * s + zu . u + b), by binary cross-entropy on the
    labelled rows (lightly L2-regularised; no labels: alpha 1, u and b 0)."""
    import torch

    log_alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
    u = torch.zeros(zu_l.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    if len(y):

        def closure() -> Tensor:
            logit = log_alpha.exp() * s_l + zu_l @ u + b
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            return bce + 1e-4 * (u.square().sum() + log_alpha.square())

        _lbfgs([log_alpha, u, b], closure)
    return float(log_alpha.detach().exp()), u.detach(), float(b.detach())


@dataclass(frozen=True)
class _Standardised:
    """The fit's inputs as tensors, standardised (a cosine differs by hundredths between
    candidates, a rating by a star): the labelled rows, the padded lists and their mask, and
    which columns rank (item-level) and which only calibrate (user-level)."""

    z_l: Tensor
    zi_c: Tensor  # the lists' item-level columns
    mask: Tensor
    target: Tensor
    mu: Tensor
    sigma: Tensor
    item_idx: Tensor
    user_idx: Tensor
    anchor_pos: int  # the prior's position among the item-level columns

    @classmethod
    def of(
        cls,
        cols: list[str],
        labelled: npt.NDArray[np.floating[Any]],
        lists: Sequence[npt.NDArray[np.floating[Any]]],
        targets: Sequence[int],
        user_level: Sequence[str],
        anchor: int,
    ) -> _Standardised:
        import torch

        d = len(cols)
        x_l = torch.as_tensor(np.asarray(labelled, dtype=np.float64)).reshape(-1, d)
        width = max((len(lst) for lst in lists), default=1)
        x_c = torch.zeros((len(lists), width, d), dtype=torch.float64)
        mask = torch.zeros((len(lists), width), dtype=torch.bool)
        for n, lst in enumerate(lists):
            x_c[n, : len(lst)] = torch.as_tensor(np.asarray(lst, dtype=np.float64))
            mask[n, : len(lst)] = True
        every = torch.cat([x_l, x_c[mask]]) if len(lists) else x_l
        mu = every.mean(0) if len(every) else torch.zeros(d, dtype=torch.float64)
        sigma = every.std(0).nan_to_num(1.0).clamp(min=1e-6) if len(every) > 1 else torch.ones(d)
        sigma = sigma.to(torch.float64)
        user = torch.tensor([c in user_level for c in cols])
        item_idx = torch.nonzero(~user)[:, 0]
        return cls(
            z_l=(x_l - mu) / sigma,
            zi_c=((x_c - mu) / sigma)[:, :, item_idx],
            mask=mask,
            target=torch.as_tensor(np.asarray(targets, dtype=np.int64)).reshape(-1),
            mu=mu,
            sigma=sigma,
            item_idx=item_idx,
            user_idx=torch.nonzero(user)[:, 0],
            anchor_pos=int((item_idx == anchor).nonzero()[0, 0]),
        )

    def prior_on(self, rows: Tensor | slice) -> Tensor:
        """The prior: the anchor column alone, at its scale fitted on these lists (kept
        non-negative)."""
        import torch

        one = self.zi_c[rows, :, self.anchor_pos : self.anchor_pos + 1]
        ones = torch.ones(1, dtype=torch.float64)
        scale = _fit_rank(one, self.mask[rows], self.target[rows], ones, 0.0)
        w = torch.zeros(len(self.item_idx), dtype=torch.float64)
        w[self.anchor_pos] = float(scale.clamp(min=0.0)[0])
        return w

    def list_loss(self, w: Tensor, rows: Tensor | slice = slice(None)) -> float:
        return float(_list_loss(self.zi_c[rows] @ w, self.mask[rows], self.target[rows]))


def _shrinkage(
    data: _Standardised, w_prior: Tensor, folds: int, seed: int
) -> tuple[str, dict[str, float], dict[str, float]]:
    """The L2 strength toward the prior (or the prior itself, ``"prior"``) by cross-validation
    over the lists and the one-standard-error rule: the most shrunk candidate whose
    cross-validated loss is within one standard error of the best one's, so features the lists
    cannot tell from noise do not reorder the first stage. Also each candidate's mean loss and
    its standard error."""
    import torch

    n = len(data.target)
    fold_of = np.random.default_rng(seed).permutation(n) % max(1, folds)
    cv: dict[str, float] = {}
    se: dict[str, float] = {}
    if n < 2 * folds:  # too few lists to choose: keep the first stage's order
        return "prior", cv, se
    for lam in (None, *LAMBDAS):  # None: the prior itself (its scale from the fold)
        losses = []
        for f in range(folds):
            held = torch.as_tensor(fold_of == f)
            w = (
                data.prior_on(~held)
                if lam is None
                else _fit_rank(data.zi_c[~held], data.mask[~held], data.target[~held], w_prior, lam)
            )
            losses.append(data.list_loss(w, held))
        key = "prior" if lam is None else str(lam)
        cv[key] = float(np.mean(losses))
        se[key] = float(np.std(losses, ddof=1) / np.sqrt(folds))
    best = min(cv, key=lambda k: cv[k])
    order = ["prior", *(str(lam) for lam in sorted(LAMBDAS, reverse=True))]
    return next(k for k in order if cv[k] <= cv[best] + se[best]), cv, se


def fit(
    columns: Sequence[str],
    labelled: npt.NDArray[np.floating[Any]],
    labels: npt.NDArray[np.floating[Any]],
    lists: Sequence[npt.NDArray[np.floating[Any]]],
    targets: Sequence[int],
    *,
    user_level: Sequence[str] = (),
    prior: str = "retrieval_score",
    folds: int = 5,
    seed: int = 0,
) -> Fusion:
    """Fits the fusion.

    Args:
        columns: names of the columns of every row (e.g. ``text`` and the feature names).
        labelled: (n, d) rows of the held-out validation interactions.
        labels: their like (1) / dislike (0) labels.
        lists: per validation user with the held-out item among the candidates, the (m, d) rows
            of the candidate list.
        targets: the held-out item's position in each list.
        user_level: columns constant within a user's list (they only calibrate).
        prior: the column whose order is kept when the lists say nothing (falls back to
            ``text`` when absent).
        folds: cross-validation folds over lists for the shrinkage strength.
        seed: seeds the fold assignment.

    Returns:
        The fused weights in raw units.
    """
    import torch

    cols = list(columns)
    anchor = cols.index(prior) if prior in cols else cols.index("text")
    data = _Standardised.of(cols, labelled, lists, targets, user_level, anchor)
    record: dict[str, Any] = {"lists_with_target": len(lists), "prior": cols[anchor]}
    if len(lists):
        w_prior = data.prior_on(slice(None))
        choice, cv, se = _shrinkage(data, w_prior, folds, seed)
        w_rank = (
            w_prior
            if choice == "prior"
            else _fit_rank(data.zi_c, data.mask, data.target, w_prior, float(choice))
        )
        record.update(
            prior_scale=float(w_prior[data.anchor_pos]),
            l2=None if choice == "prior" else float(choice),
            chosen=choice,
            cv_list_loss=cv,
            cv_list_loss_se=se,
            list_loss_prior=data.list_loss(w_prior),
            list_loss=data.list_loss(w_rank),
        )
    else:
        w_rank = torch.zeros(len(data.item_idx), dtype=torch.float64)
        w_rank[data.anchor_pos] = 1.0

    # The probability: alpha * s + user terms + b, alpha = exp(.) > 0 keeps the order of s.
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    z_l = data.z_l
    alpha, u, b = _fit_probability(z_l[:, data.item_idx] @ w_rank, z_l[:, data.user_idx], y)
    z_weights = torch.zeros(len(cols), dtype=torch.float64)
    z_weights[data.item_idx] = alpha * w_rank
    z_weights[data.user_idx] = u
    weights = (z_weights / data.sigma).numpy()
    bias = b - float((z_weights * data.mu / data.sigma).sum())
    record.update(
        alpha=alpha,
        ranking_weights_standardised=dict(
            zip([cols[i] for i in data.item_idx.tolist()], w_rank.tolist(), strict=True)
        ),
    )
    return Fusion(tuple(cols), weights, bias, record)
