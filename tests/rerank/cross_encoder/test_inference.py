"""Inference: backend selection, bad feature input, and every backend scoring alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from catalog import Catalog, ItemTextTemplate
from rerank import Reranker


def test_native_bf16_is_read_from_the_cpu_flags() -> None:
    from rerank.cross_encoder.backends import native_bf16

    assert native_bf16("flags : fpu avx2 avx512f avx512_bf16 vaes") is True
    assert native_bf16("flags : fpu avx2 amx_bf16 amx_tile") is True
    assert native_bf16("flags : fpu avx2 avx512f vaes") is False


def test_auto_picks_the_fastest_backend_for_the_cpu_and_folder(tmp_path: Path) -> None:
    from duorank.cli import options
    from rerank.cross_encoder import inference
    from rerank.cross_encoder.backends import resolve_backend

    bf16 = "flags : fpu avx2 avx512f avx512_bf16"
    plain = "flags : fpu avx2 avx512f"
    assert resolve_backend(tmp_path, "auto", bf16) == "torch-bf16"
    assert resolve_backend(tmp_path, "auto", plain) == "torch"  # nothing exported
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "model-int8.onnx").write_bytes(b"")
    assert resolve_backend(tmp_path, "auto", plain) == "onnx-int8"
    assert resolve_backend(tmp_path, "auto", bf16) == "torch-bf16"  # native bf16 is faster
    assert resolve_backend(tmp_path, "onnx", bf16) == "onnx"  # a named backend is kept
    # The CLI repeats the names so that --help imports no torch; they must not drift.
    assert options.BACKENDS == inference.BACKENDS and options.AUTO == inference.AUTO


def test_empty_unknown_and_bad_features(trained: tuple[Path, Catalog]) -> None:
    out, _ = trained
    reranker = Reranker(out)
    assert reranker.score("x", []).shape == (0,)
    assert reranker.rerank("x", [], [], k=5) == []
    with pytest.raises(KeyError, match="unknown item id 'nope'"):
        reranker.rerank_items("x", ["1", "nope"], {"1": "Film 1"}, k=2)
    with pytest.raises(ValueError, match=r"features must have shape \(2, 4\)"):
        reranker.score("x", ["a", "b"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose from auto, torch"):
        Reranker(out, backend="tensorrt")
    assert Reranker(out, backend="auto").backend in ("torch", "torch-bf16")
    with pytest.raises(FileNotFoundError, match="not a reranker folder"):
        Reranker(out / "backbone")


def test_backends_agree(trained: tuple[Path, Catalog]) -> None:
    from rerank import export_onnx

    out, catalog = trained
    written = export_onnx(out)
    # Whole pairs, then (user_prefix) the user side and the item side as two graphs; int8 of each.
    names = ["model.onnx", "user.onnx", "items.onnx"]
    assert [p.name for p in written] == names + [n.replace(".", "-int8.") for n in names]
    # The heads stay fp32 in the int8 file: quantizing the feature head's input would put the
    # retrieval score, popularity and ratings on one 8-bit scale.
    import onnx

    from rerank.cross_encoder.export import head_nodes

    assert len(head_nodes(written[0])) == 4  # two Gemms, and the MatMuls they become
    for int8 in (written[3], written[5]):  # the whole pairs, the item side
        int8_nodes = onnx.load(str(int8)).graph.node
        quantized = [n.name for n in int8_nodes if n.op_type == "MatMulInteger"]
        assert quantized and not [n for n in quantized if "head/" in n], int8.name
    texts = [ItemTextTemplate().render(item) for item in catalog.items.values()]
    rng = np.random.default_rng(0)
    n = len(texts)
    feats = np.stack(
        [rng.uniform(-0.2, 0.9, n), rng.uniform(0, 1, n), *rng.uniform(-1, 1, (2, n))], axis=1
    )
    user = "Liked, most recent first: Film 3; Film 7; Film 11. Disliked: Film 2"
    # Every backend's transformer runs, even where the fusion gave the text no weight.
    # With the features the default model reads, every backend; the text part alone (whose
    # scores barely differ after two training steps) for the float backends. Int8 on the text
    # alone of a fully trained model is measured by `duorank bench rerank`.
    for features, backends in (
        (feats, ("torch-bf16", "onnx", "onnx-int8")),
        (np.zeros_like(feats), ("torch-bf16", "onnx")),
    ):
        reference = Reranker(out, skip_unweighted_text=False).score(user, texts, features)
        for backend in backends:
            other = Reranker(out, backend=backend, skip_unweighted_text=False).score(
                user, texts, features
            )
            rho = _spearman(reference, other)
            assert rho >= 0.98, (backend, rho)
    reference = Reranker(out, skip_unweighted_text=False).score(user, texts, feats)
    onnx_fp32 = Reranker(out, backend="onnx", skip_unweighted_text=False)
    assert onnx_fp32.core.prefix_once  # the two graphs: the user side once, as torch does
    np.testing.assert_allclose(onnx_fp32.score(user, texts, feats), reference, atol=1e-4)
    onnx_fp32.core.prefix_once = False  # the whole-pair graph gives the same numbers
    np.testing.assert_allclose(onnx_fp32.score(user, texts, feats), reference, atol=1e-4)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def test_onnx_threads_sleep_between_runs_unless_asked(trained: tuple[Path, Catalog]) -> None:
    """ONNX Runtime's threads busy-wait after a run by default; a server interleaving it with
    torch must not let them (the user embedding's tail), so the sessions turn it off."""
    from rerank import Reranker, export_onnx
    from rerank.cross_encoder.backends import OnnxBackend

    out, _ = trained
    if not (out / "onnx" / "items-int8.onnx").is_file():
        export_onnx(out)
    key = "session.intra_op.allow_spinning"
    for spin, expected in ((False, "0"), (True, "1")):
        core = Reranker(out, backend="onnx-int8", spin=spin).core
        assert isinstance(core, OnnxBackend) and core.prefix_once
        for session in (core._user, core._items):
            assert session.get_session_options().get_session_config_entry(key) == expected
