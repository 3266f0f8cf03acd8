"""`train()`: the training loop, its optimizer, distillation teacher, feature cache and run folder."""
