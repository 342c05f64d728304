"""Nightly index builds: catalog -> cached embeddings -> FAISS -> versioned, verified, published."""
