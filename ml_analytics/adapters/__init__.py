"""Where the service leans on another package's internals, because no public way does
what it needs: one module each, written for one upstream version, which
tests/unit/test_adapters.py names and checks (it fails on an upgrade, so that the
adapter is read again before the pin moves).

- `aiokafka_fetcher`: aiokafka 0.14's per-partition record iterator, so that a batch
  the consumer cannot decode stops only its partition (consumers/stalls.py);
- `uvicorn_h11`: uvicorn 0.55's h11 protocol with a bound on the request head and a
  time limit on receiving a request (http/server.py);
- `process_pool`: Python 3.11's ProcessPoolExecutor, stopped with its busy workers
  killed, and spared a race of its own shutdown (workers/pool.py).
"""
