"""vitdetect: fine-tune a Vision Transformer to tell real photographs from AI-generated images."""

__version__ = "0.1.0"
