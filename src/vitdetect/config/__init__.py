"""Settings of every command, the model presets and the label map: plain data, no torch."""
