"""One adapter per AWS resource; each takes its boto3 client in ``__init__``."""
