"""The ranking stage's package stands alone: importing it (and the package faces) never loads
torch, which the cross-encoder alone needs."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

CHECK = """
import sys
import rerank
import rerank.ranker
from rerank import GBDTRanker, StageTables
from rerank.ranker import candidates, features, model, stacking, tables, train
assert GBDTRanker is model.GBDTRanker
print(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")))
"""


def test_importing_the_ranker_never_imports_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout


def test_the_cross_encoders_face_loads_on_first_use() -> None:
    check = "import sys, rerank; assert 'torch' not in sys.modules; rerank.Reranker; print('ok')"
    done = subprocess.run(
        [sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert done.stdout.strip() == "ok"
