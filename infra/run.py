#!/usr/bin/env python3
"""`make run`: start the local broker (unless KAFKA_BOOTSTRAP_SERVERS points elsewhere), the Faust
worker and the edge; print the URLs and tokens; stop everything it started on Ctrl-C.

Authentication stays on: when no key source is configured, a random HS256 secret is generated into
`.run/auth-secret` (git-ignored, kept across runs so tokens printed earlier keep working) and handed to
the edge, and an admin token and a subscribe-only token signed with it are printed."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KAFKACTL = ROOT / "infra" / "kafka" / "kafkactl.py"
SECRET_FILE = ROOT / ".run" / "auth-secret"
KEY_SOURCES = ("ES_AUTH_JWT_SECRET", "ES_AUTH_JWT_PUBLIC_KEY_FILE", "ES_AUTH_JWKS_URL", "ES_AUTH_API_KEYS_FILE")
TOKEN_TTL_S = 12 * 3600


def auth_secret(env: dict[str, str]) -> str | None:
    """Return the HS256 secret the edge will use (generated into SECRET_FILE when none is configured),
    or None when auth is off or another key source is configured (then no tokens can be printed)."""
    if env.get("ES_AUTH", "on") == "off":
        return None
    if env.get("ES_AUTH_JWT_SECRET"):
        return env["ES_AUTH_JWT_SECRET"]
    if any(env.get(name) for name in KEY_SOURCES):
        return None
    if not SECRET_FILE.exists():
        SECRET_FILE.parent.mkdir(parents=True, exist_ok=True)
        SECRET_FILE.touch(mode=0o600)
        SECRET_FILE.write_text(secrets.token_urlsafe(48))
        say(f"Generated a JWT secret in {SECRET_FILE.relative_to(ROOT)} (git-ignored; delete it to rotate).")
    env["ES_AUTH_JWT_SECRET"] = SECRET_FILE.read_text().strip()
    return env["ES_AUTH_JWT_SECRET"]


def auth_lines(env: dict[str, str], secret: str | None, base: str) -> str:
    """Return the lines that tell how to call the edge: tokens and a ready curl line, or why there are none."""
    if env.get("ES_AUTH", "on") == "off":
        return "  auth             OFF (ES_AUTH=off): everyone is admin; never expose this edge\n"
    if secret is None:
        return "  auth             on, with your configured key source: bring your own tokens or API keys\n"
    import jwt  # the venv's PyJWT (make run uses it)

    def mint(sub: str, scope: str) -> str:
        return jwt.encode({"sub": sub, "scope": scope, "exp": int(time.time()) + TOKEN_TTL_S}, secret, "HS256")

    admin, reader = mint("dev-admin", "admin"), mint("dev-reader", "subscribe:*")
    return (f"  admin token      {admin}\n"
            f"  subscribe token  {reader}\n"
            f"                   (subscribe:*, valid {TOKEN_TTL_S // 3600} h; paste either in /docs, Authorize)\n"
            f"  try              curl -N -H 'Authorization: Bearer {reader}' {base}/api/v1/events/stream\n")


def say(msg: str) -> None:
    """Print a progress line at once."""
    print(f"[run] {msg}", flush=True)


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 90.0) -> bool:
    """Poll `url` until it answers 200, printing progress; False if the process died or time ran out."""
    deadline, last = time.monotonic() + timeout, 0.0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        except urllib.error.HTTPError as exc:
            reason = json.loads(exc.read() or b"{}").get("detail", exc.reason)
        except OSError as exc:
            reason = str(exc)
        if time.monotonic() - last > 3:
            say(f"Waiting for {url}: {reason}")
            last = time.monotonic()
        time.sleep(0.3)
    return False


def main() -> int:
    """Start the stack and block until Ctrl-C."""
    env = dict(os.environ)
    started_broker = False
    if not env.get("KAFKA_BOOTSTRAP_SERVERS"):
        running = subprocess.run([sys.executable, str(KAFKACTL), "status"], capture_output=True).returncode == 0
        if subprocess.run([sys.executable, str(KAFKACTL), "up"]).returncode != 0:
            return 1
        started_broker = not running
        env["KAFKA_BOOTSTRAP_SERVERS"] = f"127.0.0.1:{env.get('ES_KAFKA_PORT', '9092')}"
    host, port = env.get("ES_HTTP_HOST", "127.0.0.1"), env.get("ES_HTTP_PORT", "8000")
    secret = auth_secret(env)
    procs: list[tuple[str, subprocess.Popen]] = []
    edge = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env)
    procs.append(("edge", edge))
    if (ROOT / "streams" / "worker" / "__main__.py").exists():
        procs.append(("worker", subprocess.Popen([sys.executable, "-m", "streams.worker"], cwd=ROOT, env=env)))

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        base = f"http://{host}:{port}"
        if not wait_http(f"{base}/readyz", edge):
            say("The edge did not become ready; see its log above.")
            return 1
        print(
            f"\n  eventstream is running (Kafka at {env['KAFKA_BOOTSTRAP_SERVERS']})\n"
            f"  API docs         {base}/docs\n"
            f"  publish          POST {base}/api/v1/events\n"
            f"  live stream      {base}/api/v1/events/stream   (SSE; ?filter={{\"types\":[\"workflow.*\"]}})\n"
            f"  history          {base}/api/v1/events/history\n"
            f"  connections      {base}/api/v1/connections   stats {base}/api/v1/stats\n"
            f"  endpoints        {base}/api/v1/endpoints   open streams (every edge) {base}/api/v1/streams\n"
            f"  dashboard        {base}/dashboard\n"
            f"  topics           {base}/api/v1/topics\n"
            f"  schema registry  {base}/api/v1/registry\n"
            f"  health           {base}/healthz  {base}/readyz\n"
            f"{auth_lines(env, secret, base)}\n"
            "  Ctrl-C stops everything started here.\n", flush=True)
        while all(p.poll() is None for _, p in procs):
            time.sleep(0.5)
        for name, p in procs:
            if p.poll() is not None:
                say(f"The {name} exited with code {p.returncode}; stopping.")
        return 1
    except KeyboardInterrupt:
        say("Stopping...")
        return 0
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for _, p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if started_broker:
            subprocess.run([sys.executable, str(KAFKACTL), "down"])


if __name__ == "__main__":
    sys.exit(main())
