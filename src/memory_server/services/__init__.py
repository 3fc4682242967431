"""The service layer: the one place where memory behaviour lives."""
