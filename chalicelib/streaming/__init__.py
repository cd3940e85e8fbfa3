"""Token streaming over API Gateway's WebSocket API (issue 8).

``tokens``   per-request capability tokens (HMAC), minted by the poller, checked by the relay
``frames``   the server frames a client receives (chunk / done / error), built in one place
``service``  the WebSocket routes' work: $connect, $default (admit and enqueue), $disconnect
``relay``    the relay route: an HPC function's push → frames posted to the connection
``notifier`` the poller's side: capability for the task, the done/error frame once stored
"""
