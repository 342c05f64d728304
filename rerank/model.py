"""The point-wise cross-encoder: a transformer reads (user text, item text) and scores the pair.

Two heads, chosen at training time:

* ``binary``: one logit -> sigmoid = P(like/click), trained with binary cross-entropy.
* ``rating``: one logit per rating level -> softmax, trained with cross-entropy. The score is
  P(rating >= threshold) (the sum of the softmax over levels at or above the threshold); the
  expected rating is available too.

Beside the text, the head takes optional scalar features (by default the retrieval stage's cosine
score and log popularity), so the reranker can keep a good first-stage order and learn what the
text adds. Pooling is the attention-masked mean of the last hidden states, the pooling the
bundled sentence-transformer was trained with, so the head starts from meaningful vectors.

Saved form (a folder, no pickle): ``backbone/`` (Hugging Face ``save_pretrained``: config,
safetensors, tokenizer), ``head.safetensors`` and ``reranker.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rerank.data import FEATURES

HEADS = ("binary", "rating")
DEFAULT_FEATURES = FEATURES  # all of them: the head learns how much each one is worth


@dataclass(frozen=True)
class RerankerConfig:
    """What defines a reranker (saved as ``reranker.json``).

    Attributes:
        head: ``binary`` or ``rating``.
        levels: rating values of the classes, ascending (``rating`` head only).
        threshold: ratings at or above are likes (labels, and the ``rating`` head's score).
        features: names of the scalar features the head reads (may be empty).
        max_length: token cap for a (user, item) pair.
        temperature: logit temperature fitted on validation (1.0 = uncalibrated).
        user_template: parameters of the user text template used in training.
        base_model: where the backbone came from.
        retrieval: the first-stage tower whose score is the ``retrieval_score`` feature
            (``mean_items``: zero-shot pooling; ``sequential``: the trained tower); serving
            must use the same kind.
    """

    head: str = "binary"
    levels: tuple[float, ...] = ()
    threshold: float = 4.0
    features: tuple[str, ...] = DEFAULT_FEATURES
    max_length: int = 160
    temperature: float = 1.0
    user_template: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""
    retrieval: str = "mean_items"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.head == "rating" and len(self.levels) < 2:
            raise ValueError("the rating head needs at least two rating levels")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def n_outputs(self) -> int:
        """Logits per pair."""
        return 1 if self.head == "binary" else len(self.levels)


class RerankerNet(nn.Module):
    """Backbone + mean pooling + linear head over [pooled text; features]."""

    def __init__(self, backbone: nn.Module, hidden: int, config: RerankerConfig) -> None:
        super().__init__()
        self.backbone = backbone
        self.config = config
        self.dropout = nn.Dropout(0.1)
        self.head = nn.Linear(hidden, config.n_outputs)
        n_features = len(config.features)
        self.feature_head = nn.Linear(n_features, config.n_outputs) if n_features else None

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        """Raw logits, shape (batch, n_outputs); ``features`` is (batch, n_features)."""
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        hidden = out.last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        logits: torch.Tensor = self.head(self.dropout(pooled))
        if self.feature_head is not None:
            logits = logits + self.feature_head(features.to(logits.dtype))
        return logits


def probability(logits: torch.Tensor, config: RerankerConfig) -> torch.Tensor:
    """Logits -> P(like), with the fitted temperature applied."""
    scaled = logits / config.temperature
    if config.head == "binary":
        return torch.sigmoid(scaled[:, 0])
    probs = torch.softmax(scaled, dim=-1)
    like = torch.tensor([v >= config.threshold for v in config.levels], device=logits.device)
    return probs[:, like].sum(dim=-1)


def expected_rating(logits: torch.Tensor, config: RerankerConfig) -> torch.Tensor:
    """The ``rating`` head's expected rating (softmax-weighted mean of the levels)."""
    if config.head != "rating":
        raise ValueError("expected_rating needs the rating head")
    probs = torch.softmax(logits / config.temperature, dim=-1)
    levels = torch.tensor(config.levels, dtype=probs.dtype, device=probs.device)
    return (probs * levels).sum(dim=-1)


def new_net(base_model: str, config: RerankerConfig) -> tuple[RerankerNet, Any]:
    """A fresh net on a backbone folder (BERT-like, sentence-transformers or cross-encoder)."""
    from transformers import AutoModel, AutoTokenizer

    backbone = AutoModel.from_pretrained(base_model, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=False)
    net = RerankerNet(backbone, int(backbone.config.hidden_size), config)
    if net.feature_head is not None:  # start by trusting the first stage's score a little
        with torch.no_grad():
            net.feature_head.weight.zero_()
            net.feature_head.bias.zero_()
            if "retrieval_score" in config.features:
                net.feature_head.weight[:, config.features.index("retrieval_score")] = 1.0
    return net, tokenizer


def save_net(
    net: RerankerNet,
    tokenizer: Any,
    folder: Path,
    config: RerankerConfig,
    card: dict[str, Any] | None = None,
) -> None:
    """Writes backbone (safetensors), head weights and ``reranker.json`` into ``folder``."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    net.backbone.save_pretrained(folder / "backbone", safe_serialization=True)  # type: ignore[operator]
    tokenizer.save_pretrained(folder / "backbone")
    head = {f"head.{k}": v.detach().cpu().contiguous() for k, v in net.head.state_dict().items()}
    if net.feature_head is not None:
        head.update(
            {
                f"feature_head.{k}": v.detach().cpu().contiguous()
                for k, v in net.feature_head.state_dict().items()
            }
        )
    save_file(head, str(folder / "head.safetensors"))
    (folder / "reranker.json").write_text(json.dumps(asdict(config), indent=2, sort_keys=True))
    if card is not None:
        (folder / "duorank-card.json").write_text(
            json.dumps(card, indent=2, sort_keys=True, default=_json_default)
        )


def read_config(folder: Path) -> RerankerConfig:
    """Reads ``reranker.json``.

    Raises:
        FileNotFoundError: the folder is not a reranker folder.
        ValueError: the config is invalid (the message names the field).
    """
    path = folder / "reranker.json"
    if not path.is_file():
        raise FileNotFoundError(f"not a reranker folder (no reranker.json): {folder}")
    raw = json.loads(path.read_text())
    raw["levels"] = tuple(raw.get("levels", ()))
    raw["features"] = tuple(raw.get("features", ()))
    try:
        return RerankerConfig(**raw)
    except TypeError as exc:
        raise ValueError(f"{path}: {exc}") from None


def load_net(folder: Path) -> tuple[RerankerNet, Any, RerankerConfig]:
    """Loads a saved reranker (safetensors only, ``trust_remote_code=False``)."""
    from safetensors.torch import load_file
    from transformers import AutoModel, AutoTokenizer

    config = read_config(folder)
    backbone = AutoModel.from_pretrained(folder / "backbone", trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(folder / "backbone", trust_remote_code=False)
    net = RerankerNet(backbone, int(backbone.config.hidden_size), config)
    state = load_file(str(folder / "head.safetensors"))
    net.head.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("head.")})
    if net.feature_head is not None:
        net.feature_head.load_state_dict(
            {k[13:]: v for k, v in state.items() if k.startswith("feature_head.")}
        )
    net.eval()
    return net, tokenizer, config


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, tuple):
        return list(value)
    return str(value)
