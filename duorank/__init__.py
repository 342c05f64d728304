"""duorank: a two-stage recommender (a two-tower first stage over FAISS, a ranking stage over
several candidate sources, a cross-encoder), with Redis-cached embeddings. This package is the
app: settings, the home folder, jobs and the command line."""

__version__ = "0.1.0"
