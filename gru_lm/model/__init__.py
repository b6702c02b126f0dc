"""The model: the cells written from their equations, their fast windows and the compiled kernels (csrc/) that run
them, dropout, the character model, and the checkpoint file that holds it."""
