"""Batch: the OpenAI Files and Batches API, the S3 drop folder, and the sharded engine path.

``api`` serves the routes (files, batches); ``worker`` (``python -m chalicelib.batch.main``)
consumes the batch queue: it validates an input file streaming, splits it into shards, runs one
HPC task per shard (``hpc_functions.batch.run_shard``) and finalizes the output in input order.
"""
