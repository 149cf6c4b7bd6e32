"""The sidecar's serving limits as real clients meet them: a body over `--max-body-bytes`
sent by the Node `openai` client (which writes the whole body before it reads the answer)
must come back as the 413 every time — the sidecar reads and discards the rest of the upload
before it closes (a lingering close) instead of resetting the connection under the client.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import openai
import pytest

from support import sidecar

ROOT = Path(__file__).resolve().parent
NODE_MODULES = os.environ.get("DETOUR_NODE_MODULES", "")
ROUTES = """
apiVersion: detour.dev/v1alpha1
kind: ModelRoute
metadata: {name: m}
spec:
  model: m
  targets:
    - {name: t, provider: mock, model: up}
"""
ELEVEN_MIB = 11 * 1024 * 1024


def test_node_client_reads_the_413_of_an_11_mib_body(tmp_path):
    """Nine 11 MiB uploads through openai-node against the default 10 MiB limit: each one
    gets the 413 with its code, none a connection error."""
    node = shutil.which("node")
    if not node or not NODE_MODULES:
        pytest.skip("node and DETOUR_NODE_MODULES are needed (run through scripts/test)")
    with sidecar(tmp_path, ROUTES) as sc:
        arg = json.dumps({"base": f"http://127.0.0.1:{sc.port}/v1", "bytes": ELEVEN_MIB, "tries": 9})
        done = subprocess.run([node, str(ROOT / "node" / "large_body.cjs"), arg], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "NODE_PATH": NODE_MODULES})
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen == [{"status": 413, "code": "request_too_large"}] * 9, seen
        assert 'detour_refused_requests_total{reason="body_too_large"} 9' in sc.metrics()


def test_python_client_reads_the_413_of_an_11_mib_body(tmp_path):
    """The same upload through the Python `openai` client: a 413 naming the limit."""
    with sidecar(tmp_path, ROUTES) as sc:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{sc.port}/v1", api_key="unused", max_retries=0)
        for _ in range(3):
            with pytest.raises(openai.APIStatusError) as e:
                client.chat.completions.create(model="m", messages=[{"role": "user", "content": "x" * ELEVEN_MIB}])
            assert e.value.status_code == 413
            assert "--max-body-bytes" in str(e.value)
