"""Explained recommendations: evidence from the data, candidate statements, the model's choice, verification, necessity, text metrics."""
