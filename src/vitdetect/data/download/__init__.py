"""`vitdetect download`: CIFAKE from Kaggle, a Hugging Face mirror or a local zip, verified."""
