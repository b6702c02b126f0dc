"""Generating text from a checkpoint: sampling (the compiled sampler), beam search and the local page of `serve`."""
