from ftrace.corpus.files import CorpusError
from ftrace.corpus.loaders import load_corpus, load_lama, load_records, load_sample, load_trex
from ftrace.corpus.passages import Passages
from ftrace.corpus.records import Corpus, Example, Query, Sentence, match_key, sentence_id, stated_objects

__all__ = ["Corpus", "CorpusError", "Example", "Passages", "Query", "Sentence", "load_corpus", "load_records",
           "load_lama", "load_sample", "load_trex", "match_key", "sentence_id", "stated_objects"]
