from ftrace.corpus.loaders import CorpusError, load_corpus, load_jsonl, load_lama, load_sample, load_trex
from ftrace.corpus.records import Corpus, Example, Query, Sentence, lookup_key, match_key, sentence_id, stated_objects

__all__ = ["Corpus", "CorpusError", "Example", "Query", "Sentence", "load_corpus", "load_jsonl",
           "load_lama", "load_sample", "load_trex", "match_key", "lookup_key", "sentence_id", "stated_objects"]
