"""From files to tensors: CIFAKE download and import, the one image decoder, the dataset, preprocessing."""
