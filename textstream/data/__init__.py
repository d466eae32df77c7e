"""The data stage: from sources to token files to training windows. No TensorFlow but in ``pipeline``.

``sources`` resolves what a user names (files, directories, registry names
downloaded into the cache, the embedded default corpus); ``textio`` reads
them as normalised text in bounded memory; ``vocab`` maps characters or
UTF-8 bytes to ids; ``preparation`` encodes sources into a prepared corpus
directory (``vocab.json``, ``train.bin``, ``val.bin``) and caches it;
``prepared`` reads a prepared corpus back (and holds it while a run uses
it); ``cache`` lists and cleans the cache, never what a running process
leases or what it did not write; ``pipeline`` reads training windows
from the token files as a ``tf.data`` pipeline, a pure function of
``(seed, step, shard)``. Imports only the base modules.
"""
