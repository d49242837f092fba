from ftrace.corpus.files import CorpusError
from ftrace.corpus.loaders import load_corpus, load_lama, load_records, load_sample, load_trex, store_corpus
from ftrace.corpus.passages import Passages
from ftrace.corpus.records import Corpus, Example, Query, Sentence, match_key, sentence_id, stated_objects
from ftrace.corpus.store import CorpusStore, write_corpus

__all__ = ["Corpus", "CorpusError", "CorpusStore", "Example", "Passages", "Query", "Sentence", "load_corpus",
           "load_records", "load_lama", "load_sample", "load_trex", "match_key", "sentence_id", "stated_objects",
           "store_corpus", "write_corpus"]
