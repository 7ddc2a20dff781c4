"""The deployment side: ONNX export and verification, int8 quantization, the onnxruntime
``Classifier`` and safe image intake. Importing this package does not import torch."""
