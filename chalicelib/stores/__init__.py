"""One adapter per AWS resource; each takes its boto3 client in ``__init__``.

Stores raise their own errors, never HTTP ones; the HTTP edge (or the caller) translates::

    StoreError
    ├── BlobNotFoundError      an S3 object that should be there is not
    ├── RequestConflictError   a conditional write on a request record lost
    └── ConnectionGoneError    a WebSocket connection is closed (``GoneException``)
"""


class StoreError(Exception):
    """A store could not do what was asked; the message may name internal resources."""
