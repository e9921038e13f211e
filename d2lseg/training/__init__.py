"""A training run: the Recipe, the loop, checkpoints, callbacks, several workers, the references (the training layer:
docs/architecture.md)."""
