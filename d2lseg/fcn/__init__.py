"""The chapter's network and what it computes: ops, model, loss, metrics, inference, train, figures (the fcn layer:
docs/architecture.md)."""
