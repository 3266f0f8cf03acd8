"""`vitdetect export`: ONNX files and Hugging Face folders with their model cards."""
