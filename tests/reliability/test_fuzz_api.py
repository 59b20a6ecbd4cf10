"""Fuzz the edge's HTTP API from its own /openapi.json with schemathesis, as an admin: no answer is a 5xx.

Run by `make reliability` and `make fuzz` (slow; not in `make test`). Left out: the two SSE routes (a
stream never ends, so a request would only time out), topic create/delete (fuzzed names would make
and drop topics on the shared broker), and /api/v1/health, whose 503 is its answer while no worker
runs. The summary line (cases, failures) is printed for the report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.auth_helpers import ADMIN_TOKEN
from tests.integration.stream_helpers import private_settings, start_edge

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_EXAMPLES = int(os.environ.get("ES_FUZZ_MAX_EXAMPLES", "40"))


@pytest.mark.timeout(1800)
def test_no_operation_answers_a_server_error(kafka_bootstrap: str, tmp_path: Path) -> None:
    settings = private_settings(kafka_bootstrap, rate_limit_publish="1000000/second",
                                rate_limit_stream_opens="1000000/minute")
    edge = start_edge(settings, tmp_path)
    try:
        cli = Path(sys.executable).with_name("schemathesis")
        run = subprocess.run(
            [str(cli), "run", f"{edge.url}/openapi.json", "--checks", "not_a_server_error",
             "-H", f"Authorization: Bearer {ADMIN_TOKEN}", "--max-examples", str(MAX_EXAMPLES),
             "--request-timeout", "20", "--workers", "1", "--seed", os.environ.get("ES_FUZZ_SEED", "1"),
             "--exclude-path-regex", r"/stream$", "--exclude-path", "/api/v1/topics",
             "--exclude-path", "/api/v1/topics/{name}", "--exclude-path", "/api/v1/health", "--no-color"],
            capture_output=True, text=True, timeout=1700, cwd=tmp_path)  # its caches stay out of the tree
        output = run.stdout + run.stderr
        print(output[-6000:])
        assert run.returncode == 0, f"schemathesis found server errors:\n{output[-8000:]}\nedge log:\n" \
                                    f"{edge.log()[-4000:]}"
    finally:
        edge.stop()
