"""Data: manifests and their importers, the synthetic corpus, datasets and batch samplers."""
