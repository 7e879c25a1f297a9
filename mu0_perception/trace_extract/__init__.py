"""TraceExtract: recorded RGB-D episodes -> 3D interaction-trace training data (docs/dataset.md)."""
