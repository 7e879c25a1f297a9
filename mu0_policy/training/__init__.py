"""Training-side tools: the dataset reader, the training loop, evaluation and ONNX export."""
