"""One SQS consumer, used by every process that drains a queue (the poller, the batch worker).

``loop``        receive into a thread pool, hold each message by a lease, stop on a signal
``leases``      the messages a process holds, kept invisible by one heartbeat thread
``accounting``  metrics and usage records of what a process finished, flushed in the background
"""
