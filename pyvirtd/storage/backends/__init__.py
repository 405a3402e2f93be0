"""Storage backends, one module per pool type; base.py is the interface."""
