"""Evaluating a trained checkpoint: planning success, surprise AUROC, calibration and linear probes.

Separate from fitting: these commands only read checkpoints (calibrate adds to their meta.json).
"""
