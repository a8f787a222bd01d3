"""The ``bare_rps`` server: corral's HTTP stack with an endpoint that stores nothing.

Same uvicorn settings as ``corral serve`` (uvloop, httptools, no access log, log level
warning), the same body-size middleware, and a ``POST /v1/workloads`` that parses the
body into ``WorkloadCreate`` exactly as corral's route does and echoes it as JSON.
The difference between this and ``create_rps`` is what corral does per request beyond
HTTP and validation: the store transaction, the scheduler hook and the response model.

    python -m bench.bare_app PORT
"""

from __future__ import annotations

import sys

from fastapi import FastAPI, Request
from starlette.responses import Response

from corral.api.limits import BodyLimit
from corral.model import WorkloadCreate


def create_app() -> FastAPI:
    app = FastAPI(title="corral-bench-bare")

    @app.post("/v1/workloads", status_code=201)
    async def create(request: Request) -> Response:
        spec = WorkloadCreate.model_validate_json(await request.body())
        return Response(spec.model_dump_json(), 201, None, "application/json")

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    app.add_middleware(BodyLimit)
    return app


def main() -> None:
    import uvicorn

    uvicorn.run(
        create_app(),
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
