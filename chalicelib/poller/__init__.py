"""The poller: SQS → claim → route → Globus Compute → store → notify → delete."""
