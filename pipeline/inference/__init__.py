"""Inference: `answer(bytes)`, the one path from an upload's bytes to a result; the input gate; ONNX and the fast engine."""
