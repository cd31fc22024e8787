"""`seq2seq serve`: one model (or an ensemble) behind HTTP, with a web page.

    app.py       the HTTP app (Starlette under uvicorn): routes, deadlines, graceful stop
    protocol.py  the limits, a request's checks, the JSON answers
    batcher.py   dynamic batching: requests that arrive together are decoded together
    process.py   `seq2seq serve` in a subprocess, for tests, benchmarks and scripts
    web/         the page (HTML, CSS, JavaScript; no build step, nothing from the network)

Needs the `serve` extra (Starlette and uvicorn) for app.py; the others need only the standard
library and the toolkit.
"""
