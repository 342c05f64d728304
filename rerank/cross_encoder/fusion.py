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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

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


def _lbfgs(params: list[Any], closure: Any, iterations: int = 100) -> None:
    import torch

    opt = torch.optim.LBFGS(params, max_iter=iterations, line_search_fn="strong_wolfe")

    def step() -> Any:
        opt.zero_grad()
        loss = closure()
        loss.backward()
        return loss

    opt.step(step)  # type: ignore[no-untyped-call]


def _list_loss(scores: Any, mask: Any, target: Any) -> Any:
    """Mean softmax cross-entropy of the target over each (padded) list."""
    import torch

    masked = scores.masked_fill(~mask, float("-inf"))
    return (torch.logsumexp(masked, 1) - scores.gather(1, target[:, None])[:, 0]).mean()


def _fit_rank(z: Any, mask: Any, target: Any, prior: Any, lam: float) -> Any:
    """Ranking weights over standardised item-level columns, L2-shrunk toward ``prior``."""

    w = prior.clone().requires_grad_(True)

    def closure() -> Any:
        return _list_loss(z @ w, mask, target) + lam * (w - prior).square().sum()

    _lbfgs([w], closure)
    return w.detach()


def _fit_probability(s_l: Any, zu_l: Any, y: Any) -> tuple[float, Any, float]:
    """``alpha`` (> 0, so the order of ``s`` is kept), the user-level weights ``u`` and the
    bias ``b`` of P(like) = sigmoid(alpha * s + zu . u + b), by binary cross-entropy on the
    labelled rows (lightly L2-regularised; no labels: alpha 1, u and b 0)."""
    import torch

    log_alpha = torch.zeros((), dtype=torch.float64, requires_grad=True)
    u = torch.zeros(zu_l.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    if len(y):

        def closure() -> Any:
            logit = log_alpha.exp() * s_l + zu_l @ u + b
            bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, y)
            return bce + 1e-4 * (u.square().sum() + log_alpha.square())

        _lbfgs([log_alpha, u, b], closure)
    return float(log_alpha.detach().exp()), u.detach(), float(b.detach())


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
    d = len(cols)
    x_l = torch.as_tensor(np.asarray(labelled, dtype=np.float64)).reshape(-1, d)
    y = torch.as_tensor(np.asarray(labels, dtype=np.float64))
    width = max((len(lst) for lst in lists), default=1)
    x_c = torch.zeros((len(lists), width, d), dtype=torch.float64)
    mask = torch.zeros((len(lists), width), dtype=torch.bool)
    for n, lst in enumerate(lists):
        x_c[n, : len(lst)] = torch.as_tensor(np.asarray(lst, dtype=np.float64))
        mask[n, : len(lst)] = True
    target = torch.as_tensor(np.asarray(targets, dtype=np.int64)).reshape(-1)

    # Standardised inputs: a cosine differs by hundredths between candidates, a rating by a star.
    every = torch.cat([x_l, x_c[mask]]) if len(lists) else x_l
    mu = every.mean(0) if len(every) else torch.zeros(d, dtype=torch.float64)
    sigma = every.std(0).nan_to_num(1.0).clamp(min=1e-6) if len(every) > 1 else torch.ones(d)
    sigma = sigma.to(torch.float64)
    z_l, z_c = (x_l - mu) / sigma, (x_c - mu) / sigma
    user = torch.tensor([c in user_level for c in cols])
    item_idx = torch.nonzero(~user)[:, 0]
    user_idx = torch.nonzero(user)[:, 0]
    anchor = cols.index(prior) if prior in cols else cols.index("text")
    anchor_pos = int((item_idx == anchor).nonzero()[0, 0])
    zi_c = z_c[:, :, item_idx]
    record: dict[str, Any] = {"lists_with_target": len(lists), "prior": cols[anchor]}

    def prior_on(rows: Any) -> Any:
        """The prior: the anchor column alone, at its scale fitted on these lists (kept
        non-negative)."""
        one = zi_c[rows, :, anchor_pos : anchor_pos + 1]
        scale = _fit_rank(one, mask[rows], target[rows], torch.ones(1, dtype=torch.float64), 0.0)
        w = torch.zeros(len(item_idx), dtype=torch.float64)
        w[anchor_pos] = float(scale.clamp(min=0.0)[0])
        return w

    w_prior = torch.zeros(len(item_idx), dtype=torch.float64)
    if len(lists):
        w_prior = prior_on(slice(None))
        fold_of = np.random.default_rng(seed).permutation(len(lists)) % max(1, folds)
        cv: dict[str, float] = {}
        se: dict[str, float] = {}
        choice = "prior"  # too few lists to choose: keep the first stage's order
        if len(lists) >= 2 * folds:
            for lam in (None, *LAMBDAS):  # None: the prior itself (its scale from the fold)
                losses = []
                for f in range(folds):
                    held = torch.as_tensor(fold_of == f)
                    w = (
                        prior_on(~held)
                        if lam is None
                        else _fit_rank(zi_c[~held], mask[~held], target[~held], w_prior, lam)
                    )
                    losses.append(float(_list_loss(zi_c[held] @ w, mask[held], target[held])))
                key = "prior" if lam is None else str(lam)
                cv[key] = float(np.mean(losses))
                se[key] = float(np.std(losses, ddof=1) / np.sqrt(folds))
            # The one-standard-error rule: the most shrunk candidate whose cross-validated
            # loss is within one standard error of the best one's, so features the lists
            # cannot tell from noise do not reorder the first stage.
            best = min(cv, key=lambda k: cv[k])
            order = ["prior", *(str(lam) for lam in sorted(LAMBDAS, reverse=True))]
            choice = next(k for k in order if cv[k] <= cv[best] + se[best])
        w_rank = (
            w_prior if choice == "prior" else _fit_rank(zi_c, mask, target, w_prior, float(choice))
        )
        record.update(
            prior_scale=float(w_prior[anchor_pos]),
            l2=None if choice == "prior" else float(choice),
            chosen=choice,
            cv_list_loss=cv,
            cv_list_loss_se=se,
            list_loss_prior=float(_list_loss(zi_c @ w_prior, mask, target)),
            list_loss=float(_list_loss(zi_c @ w_rank, mask, target)),
        )
    else:
        w_rank = w_prior
        w_rank[anchor_pos] = 1.0

    # The probability: alpha * s + user terms + b, alpha = exp(.) > 0 keeps the order of s.
    alpha, u, b = _fit_probability(z_l[:, item_idx] @ w_rank, z_l[:, user_idx], y)
    z_weights = torch.zeros(d, dtype=torch.float64)
    z_weights[item_idx] = alpha * w_rank
    z_weights[user_idx] = u
    weights = (z_weights / sigma).numpy()
    bias = b - float((z_weights * mu / sigma).sum())
    record.update(
        alpha=alpha,
        ranking_weights_standardised=dict(
            zip([cols[i] for i in item_idx.tolist()], w_rank.tolist(), strict=True)
        ),
    )
    return Fusion(tuple(cols), weights, bias, record)
