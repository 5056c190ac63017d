"""Datasets: layout readers, leakage-free splits, tensors, and procedural demo data."""
