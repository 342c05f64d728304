"""ONNX export of a trained cross-encoder: fp32 and dynamically quantised int8 graphs (two
per backend for a ``user_prefix`` model: the user side, then the items), loadable with
onnxruntime and the tokenizer alone."""

from __future__ import annotations

from pathlib import Path

from rerank.cross_encoder.backends import ONNX_FILES, PREFIX_FILES
from rerank.cross_encoder.model import read_config


def head_nodes(path: Path) -> list[str]:
    """The graph nodes of the two output heads, kept in fp32 by the quantizer.

    Dynamic quantization also quantizes a node's input to 8 bits over its own range: for the
    feature head that is one scale across the retrieval score, popularity and mean ratings, so
    first-stage scores that differ by hundredths would collapse to the same step. The heads are
    a few hundred multiply-adds; the backbone is where int8 pays.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    heads = ("head.weight", "feature_head.weight")  # "net.head.weight" in a wrapper graph
    names = [
        n.name
        for n in graph.node
        if any(i == h or i.endswith("." + h) for i in n.input for h in heads)
    ]
    # The quantizer first rewrites a Gemm as MatMul + Add, the MatMul named ``<gemm>_MatMul``.
    return [*names, *(f"{name}_MatMul" for name in names)]


def export_onnx(folder: str | Path, *, quantize: bool = True, opset: int = 17) -> list[Path]:
    """Exports ``onnx/model.onnx`` (fp32) and ``onnx/model-int8.onnx`` (dynamic int8 weights,
    per output channel, onnxruntime's own quantizer) into a reranker folder; returns the
    written files.

    Raises:
        ValueError: the model has item layers (its item states come from the cache; it serves
            on the torch backends).
    """
    import torch

    from rerank.cross_encoder.model import load_net

    root = Path(folder)
    if read_config(root).item_layers:
        raise ValueError(
            f"{root} has item layers: its item states come from the cache and it serves on "
            "the torch backends (torch, torch-bf16); nothing to export"
        )
    net, tokenizer, config = load_net(root)
    out_dir = root / "onnx"
    out_dir.mkdir(exist_ok=True)
    enc = tokenizer(["a user text"], ["an item text"], return_tensors="pt")
    features = torch.zeros((1, len(config.features)), dtype=torch.float32)
    fp32 = out_dir / ONNX_FILES["onnx"]
    axes = {
        "input_ids": {0: "batch", 1: "seq"},
        "attention_mask": {0: "batch", 1: "seq"},
        "token_type_ids": {0: "batch", 1: "seq"},
        "features": {0: "batch"},
        "logits": {0: "batch"},
    }
    with torch.no_grad():
        torch.onnx.export(
            net,
            (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"], features),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids", "features"],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    written = [fp32]
    pairs = [(fp32, out_dir / ONNX_FILES["onnx-int8"])]
    if config.attention == "user_prefix":
        from rerank.cross_encoder.model import ItemSideGraph, UserSideGraph

        user_file, items_file = (out_dir / name for name in PREFIX_FILES["onnx"])
        prefix = torch.tensor([[tokenizer.cls_token_id, 2000, 2001, tokenizer.sep_token_id]])
        items = torch.tensor([[2002, 2003, tokenizer.sep_token_id], [2004, 0, 0]])
        item_mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
        with torch.no_grad():
            past, total = UserSideGraph(net)(prefix)
            torch.onnx.export(
                UserSideGraph(net),
                (prefix,),
                str(user_file),
                input_names=["prefix_ids"],
                output_names=["past", "total"],
                dynamic_axes={"prefix_ids": {1: "prefix"}, "past": {4: "prefix"}},
                opset_version=opset,
                dynamo=False,
            )
            torch.onnx.export(
                ItemSideGraph(net),
                (items, item_mask, past, total, features.expand(2, -1)),
                str(items_file),
                input_names=["input_ids", "attention_mask", "past", "total", "features"],
                output_names=["logits"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "seq"},
                    "attention_mask": {0: "batch", 1: "seq"},
                    "past": {4: "prefix"},
                    "features": {0: "batch"},
                    "logits": {0: "batch"},
                },
                opset_version=opset,
                dynamo=False,
            )
        written += [user_file, items_file]
        pairs += [
            (user_file, out_dir / PREFIX_FILES["onnx-int8"][0]),
            (items_file, out_dir / PREFIX_FILES["onnx-int8"][1]),
        ]
    if quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        for source, int8 in pairs:
            # Per output channel: closer to fp32's ranking than per tensor, at the same speed.
            quantize_dynamic(
                str(source),
                str(int8),
                weight_type=QuantType.QInt8,
                per_channel=True,
                nodes_to_exclude=head_nodes(source),
            )
            written.append(int8)
    return written
