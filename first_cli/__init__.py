"""Operator and user command lines (`first …`); never packaged into the Lambda."""
