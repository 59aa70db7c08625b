"""Offline half: data, training, ONNX export and the model registry."""
