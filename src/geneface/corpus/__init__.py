"""Multi-speaker corpora for motion pretraining: prepare a folder tree of clips into a few pack files, and
read it back lazily (format: docs/corpus-format.md).

>>> summary = prepare_corpus("clips/", "prepared/", PrepareConfig(features=("mel",)), workers=2)
>>> corpus = Corpus("prepared/")
>>> offsets = corpus.read(corpus.clips()[0], "offsets", 0, 64)   # [64, 68, 3], read from disk on demand
>>> prepare_corpus_on_ray("clips/", "prepared/", address="auto")   # the same corpus, made by Ray tasks

``geneface train motion --data prepared/`` pretrains on it (speakers balanced, some held out for validation).
"""

from .prepare import ClipItem, PrepareConfig, find_clips, parse_shard, prepare_corpus, shard_of, slurm_array_shard
from .ray_engine import prepare_corpus_on_ray
from ..corpusdata import Corpus, PackReader, is_corpus

__all__ = ["ClipItem", "Corpus", "PackReader", "PrepareConfig", "find_clips", "is_corpus", "parse_shard",
           "prepare_corpus", "prepare_corpus_on_ray", "shard_of", "slurm_array_shard"]
