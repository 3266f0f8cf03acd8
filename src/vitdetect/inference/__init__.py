"""Judging images: scoring a trained model, `Detector`, ONNX Runtime, explanations."""
