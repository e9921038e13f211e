"""The ground floor: imports nothing of the package above it; config-free, MXNet-free at import (the core layer:
docs/architecture.md)."""
