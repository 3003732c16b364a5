"""Deployment exports of trained detectors (ONNX)."""
