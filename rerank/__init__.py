"""Point-wise cross-encoder reranking: training, batched inference, fast backends."""
