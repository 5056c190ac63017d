"""The detector's torch modules: coupling subnets, per-scale flows, the detector. No training loop here."""
