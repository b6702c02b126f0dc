"""Where the work runs: the processor (model, ISA level, bfloat16 units), the torch device, the allocator and the
processes of a data-parallel job. Imports nothing of gru_lm but errors."""
