"""The point-wise cross-encoder: a transformer reads (user text, item text) and scores the pair.

Two heads, chosen at training time:

* ``binary``: one logit -> sigmoid = P(like/click), trained with binary cross-entropy.
* ``rating``: one logit per rating level -> softmax, trained with cross-entropy. The score is
  P(rating >= threshold) (the sum of the softmax over levels at or above the threshold).

Beside the text, the head takes optional scalar features (by default the retrieval stage's cosine
score and log popularity), so the reranker can keep a good first-stage order and learn what the
text adds. Pooling is the attention-masked mean of the last hidden states, the pooling the
bundled sentence-transformer was trained with, so the head starts from meaningful vectors.

Attention (chosen at training time, recorded in ``reranker.json``): ``full`` is the standard
cross-encoder, every token attending to every token. ``user_prefix`` (the default for new models)
lets the item tokens attend to the user tokens at every layer, but not the reverse: the user side
is then the same for every candidate, so serving computes it once per user and scores each
candidate on its item tokens alone (a few dozen tokens instead of the whole pair; the counts
are in docs/reranking.md). Training runs the same mask over whole pairs; a test holds the two
paths equal. The idea is PreTTR's (MacAvaney et al., SIGIR 2020: precompute one side's
representations), here as a mask rather than split layers, so the pair still interacts at every
layer.

Item layers (``item_layers`` N > 0, with ``user_prefix``; chosen at training time): the item
tokens also attend to nothing but themselves in the first N layers, at positions that do not
depend on the user (the item cut to :data:`ITEM_TOKENS`, placed where the longest user side
ends). Their hidden states after layer N are then the same for every user: serving computes
them once per item and keeps them in Redis (float16), and each call runs only the layers above
N for its candidates. The split is PreTTR's and DeFormer's; training runs the same masks.

Saved form (a folder, no pickle): ``backbone/`` (Hugging Face ``save_pretrained``: config,
safetensors, tokenizer), ``head.safetensors`` and ``reranker.json``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from catalog.thresholds import LIKE_THRESHOLD
from rerank.cross_encoder.training_args import DEFAULT_FEATURES, RENAMED

HEADS = ("binary", "rating")
ATTENTIONS = ("full", "user_prefix")
ITEM_TOKENS = 48
"""Tokens kept for the item side of a ``user_prefix`` pair; the user side gets the rest."""


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
        attention: ``full`` or ``user_prefix`` (see the module docstring). Folders written
            before the option existed are ``full``.
        item_layers: the first layers in which the item side reads only itself (0: none; see
            the module docstring).
    """

    head: str = "binary"
    levels: tuple[float, ...] = ()
    threshold: float = LIKE_THRESHOLD
    features: tuple[str, ...] = DEFAULT_FEATURES
    max_length: int = 160
    temperature: float = 1.0
    user_template: dict[str, Any] = field(default_factory=dict)
    base_model: str = ""
    retrieval: str = "mean_items"
    attention: str = "full"
    item_layers: int = 0

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise ValueError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.attention == "user_prefix" and self.max_length < ITEM_TOKENS + 16:
            raise ValueError(
                f"max_length must be >= {ITEM_TOKENS + 16} with user_prefix attention "
                f"({ITEM_TOKENS} item tokens plus room for the user), got {self.max_length}"
            )
        if self.item_layers < 0:
            raise ValueError(f"item_layers must be >= 0, got {self.item_layers}")
        if self.item_layers and self.attention != "user_prefix":
            raise ValueError("item_layers needs attention 'user_prefix'")
        if self.head == "rating" and len(self.levels) < 2:
            raise ValueError("the rating head needs at least two rating levels")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")

    @property
    def n_outputs(self) -> int:
        """Logits per pair."""
        return 1 if self.head == "binary" else len(self.levels)

    @property
    def item_room(self) -> int | None:
        """Tokens an item keeps when its side must not depend on the user (item layers)."""
        return ITEM_TOKENS if self.item_layers else None

    @property
    def item_start(self) -> int:
        """The position of an item's first token under item layers: where the longest user
        side ends, so the item's positions are the same for every user."""
        return self.max_length - ITEM_TOKENS - 1


@dataclass
class UserPrefix:
    """A user side encoded once: per layer its keys and values, and the sum of its last hidden
    states (for the mean pooling over the whole pair)."""

    past: list[tuple[torch.Tensor, torch.Tensor]]
    total: torch.Tensor

    @property
    def length(self) -> int:
        """Tokens of the user side (read from the keys' shape, so an ONNX trace keeps it
        dynamic)."""
        return self.past[0][0].shape[2]


def split_pair_ids(
    tokenizer: Any,
    user_text: str,
    item_texts: Sequence[str],
    max_length: int,
    item_room: int | None = None,
) -> tuple[list[int], list[list[int]]]:
    """``[CLS] user [SEP]`` once and ``item [SEP]`` per item; each concatenation is the
    tokenizer's own pair layout. The user text lists the most recent history first, so cutting
    it to leave :data:`ITEM_TOKENS` for the item trims the oldest history; each item is cut to
    what is left of ``max_length``, or to ``item_room`` tokens when given (an item side that
    must not depend on the user). Token types: 0 up to the first ``[SEP]``, 1 after."""
    user: list[int] = tokenizer(user_text, add_special_tokens=False)["input_ids"]
    user = user[: max_length - 3 - ITEM_TOKENS]
    sep = tokenizer.sep_token_id
    prefix = [tokenizer.cls_token_id, *user, sep]
    room = max_length - len(prefix) - 1 if item_room is None else item_room
    items: list[list[int]] = (
        tokenizer(list(item_texts), add_special_tokens=False)["input_ids"] if item_texts else []
    )
    return prefix, [[*ids[:room], sep] for ids in items]


def pad_rows(
    rows: Sequence[list[int]], pad_id: int, item_from: Sequence[int] | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input ids, attention mask, token types) of rows padded to the longest; the types are
    1 from ``item_from[i]`` on in row ``i`` (whole pairs), or everywhere when it is None
    (item-side rows)."""
    ids = torch.full((len(rows), max(map(len, rows))), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids) if item_from is not None else torch.ones_like(ids)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
        if item_from is not None:
            types[i, item_from[i] : len(row)] = 1
    return ids, mask, types


def check_prefix_backbone(backbone: Any, tokenizer: Any) -> None:
    """``user_prefix`` runs the backbone's own BERT layers under its mask: it needs their
    layout (``embeddings`` + ``encoder.layer[*]``), two token types and [CLS]/[SEP] tokens.

    Raises:
        ValueError: naming what the backbone lacks.
    """
    config = backbone.config
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    missing = [
        what
        for what, ok in (
            ("BERT-style layers (encoder.layer[*].attention.self)", layers is not None),
            ("two token types", getattr(config, "type_vocab_size", 1) >= 2),
            (
                "[CLS]/[SEP] tokens",
                tokenizer.cls_token_id is not None and tokenizer.sep_token_id is not None,
            ),
        )
        if not ok
    ]
    if missing:
        raise ValueError(
            f"attention 'user_prefix' needs {', '.join(missing)}; the "
            f"{getattr(config, 'model_type', '?')} backbone has not: train with attention 'full'"
        )


def _layer(
    layer: Any,
    hidden: torch.Tensor,
    mask: torch.Tensor | None,
    past: tuple[torch.Tensor, torch.Tensor] | None = None,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One BERT layer (post-LN, as Hugging Face's ``BertLayer``) whose queries may also attend
    to ``past`` keys/values placed before their own; returns (output, own keys, own values)."""
    sa = layer.attention.self
    b, n, _ = hidden.shape
    heads, size = sa.num_attention_heads, sa.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(b, n, heads, size).transpose(1, 2)

    q, k, v = split(sa.query(hidden)), split(sa.key(hidden)), split(sa.value(hidden))
    keys, values = k, v
    if past is not None:
        keys = torch.cat([past[0].expand(b, -1, -1, -1), k], dim=2)
        values = torch.cat([past[1].expand(b, -1, -1, -1), v], dim=2)
    ctx = nn.functional.scaled_dot_product_attention(
        q, keys, values, attn_mask=mask, dropout_p=dropout, scale=sa.scaling
    )
    attended = layer.attention.output(ctx.transpose(1, 2).reshape(b, n, heads * size), hidden)
    return layer.output(layer.intermediate(attended), attended), k, v


def prefix_hidden(
    backbone: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    item_layers: int = 0,
    item_start: int = 0,
) -> torch.Tensor:
    """Last hidden states of whole pairs under ``user_prefix`` attention (training, export):
    a key is visible to a query when it is a real token and either belongs to the user side
    (type 0) or the query belongs to the item side (type 1). In the first ``item_layers``
    layers a query sees only its own side, and the item's positions start at ``item_start``."""
    item = token_type_ids == 1
    positions = None
    if item_layers:
        n = input_ids.shape[1]
        at = torch.arange(n, device=input_ids.device).expand_as(input_ids)
        first = torch.where(item, at, n).min(dim=1, keepdim=True).values
        positions = torch.where(item, item_start + at - first, at)
    hidden: torch.Tensor = backbone.embeddings(
        input_ids=input_ids, token_type_ids=token_type_ids, position_ids=positions
    )
    real = attention_mask.bool()[:, None, :]
    upper = (real & (~item[:, None, :] | item[:, :, None]))[:, None]
    lower = (real & (item[:, :, None] == item[:, None, :]))[:, None]
    p = backbone.config.attention_probs_dropout_prob if backbone.training else 0.0
    for n_layer, layer in enumerate(backbone.encoder.layer):
        hidden, _, _ = _layer(layer, hidden, lower if n_layer < item_layers else upper, dropout=p)
    return hidden


def encode_prefix(backbone: Any, prefix_ids: torch.Tensor) -> UserPrefix:
    """Encodes ``[CLS] user [SEP]`` (shape (1, P)) once, keeping each layer's keys/values."""
    hidden = backbone.embeddings(input_ids=prefix_ids, token_type_ids=torch.zeros_like(prefix_ids))
    past = []
    for layer in backbone.encoder.layer:
        hidden, k, v = _layer(layer, hidden, None)
        past.append((k, v))
    return UserPrefix(past, hidden[0].sum(dim=0))


def item_states(
    backbone: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    item_layers: int,
    item_start: int,
) -> torch.Tensor:
    """Hidden states of items (``item [SEP]``, padded) after the first ``item_layers``
    layers, which read the item alone: the same for every user."""
    b, n = input_ids.shape
    positions = (torch.arange(n, device=input_ids.device) + item_start).expand(b, -1)
    hidden: torch.Tensor = backbone.embeddings(
        input_ids=input_ids, token_type_ids=torch.ones_like(input_ids), position_ids=positions
    )
    mask = attention_mask.bool()[:, None, None, :]
    for layer in backbone.encoder.layer[:item_layers]:
        hidden, _, _ = _layer(layer, hidden, mask)
    return hidden


def item_hidden(
    backbone: Any,
    prefix: UserPrefix,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    states: torch.Tensor | None = None,
    item_layers: int = 0,
    item_start: int = 0,
) -> torch.Tensor:
    """Last hidden states of the item tokens (``item [SEP]``, padded) after ``prefix``; with
    ``item_layers``, from the items' ``states`` after those layers (computed when None)."""
    b, n = input_ids.shape
    if item_layers:
        hidden = (
            states
            if states is not None
            else item_states(backbone, input_ids, attention_mask, item_layers, item_start)
        )
    else:
        positions = (torch.arange(n, device=input_ids.device) + prefix.length).expand(b, -1)
        hidden = backbone.embeddings(
            input_ids=input_ids, token_type_ids=torch.ones_like(input_ids), position_ids=positions
        )
    user = torch.ones_like(prefix.past[0][0][:1, 0, :, 0], dtype=torch.bool).expand(b, -1)
    mask = torch.cat([user, attention_mask.bool()], dim=1)[:, None, None, :]
    layers = list(zip(backbone.encoder.layer, prefix.past, strict=True))[item_layers:]
    for layer, past in layers:
        hidden, _, _ = _layer(layer, hidden, mask, past)
    return hidden


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
        if self.config.attention == "user_prefix":
            hidden = prefix_hidden(
                self.backbone,
                input_ids,
                attention_mask,
                token_type_ids,
                self.config.item_layers,
                self.config.item_start,
            )
        else:
            hidden = self.backbone(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return self._logits(pooled, features)

    def encode_prefix(self, prefix_ids: torch.Tensor) -> UserPrefix:
        """The user side of ``user_prefix`` pairs, computed once for all its candidates."""
        return encode_prefix(self.backbone, prefix_ids)

    def prefixed(
        self,
        prefix: UserPrefix,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        features: torch.Tensor,
        states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits of candidates (``item [SEP]`` rows) after an encoded user side: the same
        numbers :meth:`forward` gives for the whole pairs, at a fraction of the tokens. With
        item layers, ``states`` are the items' :meth:`item_states` (computed when None)."""
        hidden = item_hidden(
            self.backbone,
            prefix,
            input_ids,
            attention_mask,
            states,
            self.config.item_layers,
            self.config.item_start,
        )
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        total = prefix.total.to(hidden.dtype) + (hidden * mask).sum(dim=1)
        return self._logits(total / (prefix.length + mask.sum(dim=1)), features)

    def item_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The items' hidden states after the item layers (the same for every user)."""
        return item_states(
            self.backbone,
            input_ids,
            attention_mask,
            self.config.item_layers,
            self.config.item_start,
        )

    def _logits(self, pooled: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.head(self.dropout(pooled))
        if self.feature_head is not None:
            logits = logits + self.feature_head(features.to(logits.dtype))
        return logits


class UserSideGraph(nn.Module):
    """ONNX export of :meth:`RerankerNet.encode_prefix`: ``[CLS] user [SEP]`` ids (1, P) ->
    keys/values stacked (layers, 2, 1, heads, P, head size) and the hidden-state sum."""

    def __init__(self, net: RerankerNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, prefix_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        user = self.net.encode_prefix(prefix_ids)
        return torch.stack([torch.stack(kv) for kv in user.past]), user.total


class ItemSideGraph(nn.Module):
    """ONNX export of :meth:`RerankerNet.prefixed`, reading :class:`UserSideGraph`'s outputs."""

    def __init__(self, net: RerankerNet) -> None:
        super().__init__()
        self.net = net

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        past: torch.Tensor,
        total: torch.Tensor,
        features: torch.Tensor,
    ) -> torch.Tensor:
        user = UserPrefix([(layer[0], layer[1]) for layer in past], total)
        return self.net.prefixed(user, input_ids, attention_mask, features)


def new_net(
    base_model: str, config: RerankerConfig, layers: int | None = None
) -> tuple[RerankerNet, Any]:
    """A fresh net on a backbone folder (BERT-like, sentence-transformers or cross-encoder);
    with ``layers``, only the backbone's first ``layers`` transformer layers (a distillation
    student: the saved config says how many).

    Raises:
        ValueError: ``layers`` is not below the backbone's depth, or the backbone has no
            BERT-style ``encoder.layer`` to cut.
    """
    from transformers import AutoModel, AutoTokenizer

    backbone = AutoModel.from_pretrained(base_model, trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=False)
    if layers is not None:
        blocks = getattr(getattr(backbone, "encoder", None), "layer", None)
        if blocks is None:
            raise ValueError(
                f"layers needs a BERT-style backbone (encoder.layer[*]); this "
                f"{type(backbone).__name__} has not"
            )
        if not 1 <= layers < len(blocks):
            raise ValueError(
                f"layers must be in 1..{len(blocks) - 1} for this {len(blocks)}-layer "
                f"backbone, got {layers}"
            )
        backbone.encoder.layer = blocks[:layers]
        backbone.config.num_hidden_layers = layers
    if config.attention == "user_prefix":
        check_prefix_backbone(backbone, tokenizer)
    depth = len(backbone.encoder.layer) if config.attention == "user_prefix" else 0
    if config.item_layers and config.item_layers >= depth:
        raise ValueError(
            f"item_layers must be below the backbone's {depth} layers (the layers above read "
            f"the user), got {config.item_layers}"
        )
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
    raw["features"] = tuple(RENAMED.get(f, f) for f in raw.get("features", ()))
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
