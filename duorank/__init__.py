"""duorank: a two-tower retriever plus a point-wise reranker, with Redis-cached embeddings."""

__version__ = "0.1.0"
