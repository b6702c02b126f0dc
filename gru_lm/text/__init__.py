"""Text to ids: reading files as text, the vocabulary, prepared (memory-mapped) corpora, a run's training and
validation ids, and the batcher of truncated backpropagation through time."""
