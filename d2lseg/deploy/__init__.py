"""A trained network made faster or portable: INT8 / bfloat16, ONNX export, the MXNet-free runtime (the deploy layer:
docs/architecture.md)."""
