"""ONNX export: the exported graphs load and score without the training code."""

from __future__ import annotations

from pathlib import Path

import pytest

from catalog import Catalog

pytestmark = pytest.mark.slow


def test_onnx_loads_without_training_code(trained: tuple[Path, Catalog]) -> None:
    import onnxruntime as ort

    out, _ = trained
    if not (out / "onnx" / "model.onnx").exists():
        from rerank import export_onnx

        export_onnx(out, quantize=False)
    session = ort.InferenceSession(str(out / "onnx" / "model.onnx"))
    names = [i.name for i in session.get_inputs()]
    assert names == ["input_ids", "attention_mask", "token_type_ids", "features"]
    user = ort.InferenceSession(str(out / "onnx" / "user.onnx"))
    items = ort.InferenceSession(str(out / "onnx" / "items.onnx"))
    assert [i.name for i in user.get_inputs()] == ["prefix_ids"]
    assert [i.name for i in items.get_inputs()] == [
        "input_ids",
        "attention_mask",
        "past",
        "total",
        "features",
    ]
