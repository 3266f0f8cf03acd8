"""Building the classifier (hub, local folder, scratch preset), checkpoints and the built-in detector."""
