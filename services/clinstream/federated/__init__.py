"""Federated training across sites with Flower, on derived features only (issue 7)."""
