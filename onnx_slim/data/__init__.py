"""Calibration data, activation capture and statistics, agreement metrics, the masked model."""
