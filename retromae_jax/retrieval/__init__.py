"""Retrieval evaluation: BEIR folders, exact search, trec_eval-compatible metrics."""
