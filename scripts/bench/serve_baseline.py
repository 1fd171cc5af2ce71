"""The Python baseline of the serving benchmark: a minimal FastAPI + uvicorn app that serves
sentence-transformers with text-embeddings-inference's `/embed` request and response shape, so
that `serve_load.py --baseline` can run the same embedding scenarios against it as against
`trident serve`.

    .venv-fixtures/bin/python scripts/bench/serve_baseline.py [--model .bench/models/all-MiniLM-L6-v2]
                                                                [--host 127.0.0.1] [--port 0] [--threads 2]

What it is, deliberately: the app one writes in a few lines.
- One uvicorn process, one worker (no `--workers`: each worker would hold its own copy of the
  model), the event loop on the main thread.
- `POST /embed` `{"inputs": text | [texts], "normalize": true, "truncate": false}` → `[[float]]`
  (one vector per text, L2-normalised unless `normalize` is false); `GET /health` 200.
- The model runs one request at a time, in a thread off the event loop (so the loop keeps
  accepting connections), behind a lock: no batching across requests, no concurrent calls into
  torch (which would only fight over the same cores). Each request's texts are encoded as one
  batch, as `SentenceTransformer.encode` does.
- torch on `--threads` threads (default 2, the benchmark's setting), tokenizers single-threaded.

It loads the model first, then binds and prints `serve_baseline: listening on http://ADDR` on
stderr (the line serve_load.py reads, as with `trident serve`); `--port 0` picks a free port.
"""

import argparse
import asyncio
import os
import socket
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=str(ROOT / ".bench/models/all-MiniLM-L6-v2"))
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()

    import torch
    import uvicorn
    from fastapi import Body, FastAPI
    from fastapi.responses import JSONResponse
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(a.threads)
    model = SentenceTransformer(a.model, device="cpu")
    model.encode(["warm up"])  # the first call allocates; not the clients' cost
    lock = asyncio.Lock()
    app = FastAPI(title="sentence-transformers baseline")

    def encode(texts, normalize):
        with torch.inference_mode():
            return model.encode(texts, batch_size=max(len(texts), 1), normalize_embeddings=normalize,
                                convert_to_numpy=True, show_progress_bar=False).tolist()

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/embed")
    async def embed(body: dict = Body(...)):
        inputs = body.get("inputs")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            return JSONResponse({"error": "inputs must be a text or a non-empty list of texts",
                                 "error_type": "Validation"}, status_code=422)
        async with lock:
            vectors = await asyncio.to_thread(encode, texts, bool(body.get("normalize", True)))
        return vectors

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((a.host, a.port))
    host, port = sock.getsockname()[:2]
    print(f"serve_baseline: listening on http://{host}:{port} (sentence-transformers {a.model}, "
          f"torch threads {a.threads}, one uvicorn worker)", file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, workers=1, backlog=2048)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()
