"""Encoder, Redis embedding cache, FAISS index, user towers and tower fine-tuning."""
