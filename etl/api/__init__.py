"""``tillflow serve``: the HTTP API and WebSocket stream for tills and other systems.

Modules, one responsibility each:

- ``app``: the FastAPI application factory and its lifespan (what it opens and closes)
- ``routes``: ``/v1/transactions``, ``/healthz``, ``/readyz``, ``/metrics``
- ``upload``: ``/v1/uploads`` (CSV files, loaded as ``tillflow load`` does)
- ``stream``: the ``/v1/stream`` WebSocket
- ``ingest``: pure logic: a JSON body into per-item verdicts and Kafka records
- ``publish``: Kafka from asyncio: answers only after Kafka acknowledged
- ``auth`` and ``tokens``: bearer tokens bound to one store, stored as hashes
- ``spool``: request bodies and CSV uploads read in bounded memory and size
- ``database``: the few PostgreSQL queries the API makes, off the event loop
- ``schemas``: the OpenAPI document's models; ``errors``: every non-2xx answer
- ``metrics``: the API's Prometheus metrics; ``server``: uvicorn, configured

A sender is told "accepted" only for what Kafka acknowledged (acks=all, min ISR
2). When Kafka cannot acknowledge, the whole request is answered 503 with
``Retry-After`` and nothing in it is confirmed; as every transaction carries its
id, sending the same request again is safe (the consumer stores each id once).
"""
