"""Synthetic anomalies: the training recipe (patches blended in) and the validation reference recipe."""
