"""The FIRST gateway: everything ``app.py`` wires together."""
