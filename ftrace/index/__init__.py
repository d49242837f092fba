"""Stores: Qdrant vectors (`vectors`), Lucene BM25 (`lexical`), and the index manifest."""
