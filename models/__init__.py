"""What training and serving share (features, the ONNX model runtime, the registry) and the offline half: data, training, export."""
