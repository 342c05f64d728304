"""The Recommender (retrieve -> rerank), the HTTP API and index hot-reload."""
