"""The ranking stage: every candidate source's candidates merged (:mod:`.candidates`), their
time-safe features in batch (:mod:`.features`) over the tables the sources and features read
(:mod:`.tables`), leak-free training lists (:mod:`.stacking`), the LightGBM ranker and its
P(like) head (:mod:`.model`), and the recipe `train ranker` and `eval` share (:mod:`.train`).

Nothing here imports torch (a test holds it).
"""

from rerank.ranker.model import GBDTRanker, LikeModel, RankerConfig
from rerank.ranker.tables import StageTables
from rerank.ranker.train import RankingStageArgs

__all__ = ["GBDTRanker", "LikeModel", "RankerConfig", "RankingStageArgs", "StageTables"]
