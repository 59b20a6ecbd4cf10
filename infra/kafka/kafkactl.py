#!/usr/bin/env python3
"""Fetch, start, stop and inspect a local Apache Kafka (KRaft) from Maven Central jars.

Standard library only, so it runs before the project's virtualenv exists.

    kafkactl.py fetch                 resolve the broker jars into .cache/libs (mvn)
    kafkactl.py up | down | status    the single combined node on 127.0.0.1:9092
    kafkactl.py cluster-up | cluster-down | cluster-status
    kafkactl.py kill N                kill -9 node N (1-3) of the cluster, for fault tests
    kafkactl.py start-node N          start one cluster node again after a kill
    kafkactl.py wait HOST:PORT        wait until a broker answers a metadata request
    kafkactl.py secure-up scram|tls   a single node whose client listener needs SCRAM-SHA-256 (users made at
                                      format time) or TLS (CA and server key from ES_KAFKA_TLS_DIR)
    kafkactl.py secure-down scram|tls stop it

Secure nodes take ES_KAFKA_PORT (default 9692 for scram, 9792 for tls) and ES_KAFKA_DATA like the single
node; their users and passwords come from ES_KAFKA_SCRAM_USERS ("name:password,name:password").

Data lives under infra/kafka/.data (git-ignored) and survives restarts.
"""

from __future__ import annotations

import argparse
import base64
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
LIBS = Path(os.environ.get("ES_KAFKA_LIBS", HERE / ".cache" / "libs"))
DATA = Path(os.environ.get("ES_KAFKA_DATA", HERE / ".data"))
HEAP = os.environ.get("ES_KAFKA_HEAP", "1G")
START_TIMEOUT_S = float(os.environ.get("ES_KAFKA_START_TIMEOUT_S", "120"))

PORT = int(os.environ.get("ES_KAFKA_PORT", "9092"))  # the single node; its controller listens on PORT + 1
SINGLE = {"name": "single", "port": PORT, "controller": PORT + 1, "node_id": 1}
CLUSTER = [
    {"name": f"node{n}", "port": n * 10000 + 9092, "controller": n * 10000 + 9093, "node_id": n}
    for n in (1, 2, 3)
]


def log(msg: str) -> None:
    """Print a progress line that shows up at once, even through make."""
    print(f"[kafka] {msg}", flush=True)


# --------------------------------------------------------------------------- jars


def fetch() -> None:
    """Resolve Kafka and a log4j2 binding into LIBS unless they are already there."""
    if LIBS.is_dir() and any(LIBS.glob("kafka_2.13-*.jar")):
        return
    log(f"Fetching Apache Kafka jars from Maven Central into {LIBS} (first run only)...")
    cmd = [
        "mvn", "-q", "-B", "-f", str(HERE / "pom.xml"), "dependency:copy-dependencies",
        "-DincludeScope=runtime", f"-DoutputDirectory={LIBS}",
    ]
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError:
        sys.exit("kafka: Maven (mvn) is not installed; install it (apt-get install maven) and retry.")
    except subprocess.CalledProcessError as exc:
        sys.exit(f"kafka: mvn failed with exit code {exc.returncode}; see its output above.")
    log(f"Fetched {len(list(LIBS.glob('*.jar')))} jars.")


def java_cmd(main: str, *args: str, heap: str | None = None, logs_dir: Path | None = None) -> list[str]:
    """Build a java command line with Kafka's classpath."""
    cp = os.pathsep.join(str(p) for p in sorted(LIBS.glob("*.jar")))
    cmd = ["java"]
    if heap:
        cmd += [f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20"]
    else:
        cmd += ["-Xmx256M", "-XX:TieredStopAtLevel=1"]
    cmd += [
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={HERE / 'log4j2.properties'}",
        f"-Dkafka.logs.dir={logs_dir or (DATA / 'tool-logs')}",
        "-cp", cp, main, *args,
    ]
    return cmd


# --------------------------------------------------------------------------- metadata probe


def _metadata_request(correlation_id: int) -> bytes:
    """Encode a MetadataRequest v1 for all topics (every Kafka 2.x-4.x broker accepts it)."""
    client_id = b"kafkactl"
    header = struct.pack(">hhih", 3, 1, correlation_id, len(client_id)) + client_id
    body = struct.pack(">i", -1)  # null topic array = all topics
    payload = header + body
    return struct.pack(">i", len(payload)) + payload


def broker_count(host: str, port: int, timeout: float = 2.0) -> int:
    """Return how many brokers a metadata request lists, raising OSError when nobody answers."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(_metadata_request(7))
        size = struct.unpack(">i", _recv_exact(sock, 4))[0]
        data = _recv_exact(sock, size)
    correlation_id, n_brokers = struct.unpack(">ii", data[:8])
    if correlation_id != 7:
        raise OSError("unexpected correlation id in metadata response")
    return n_brokers


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError("connection closed by broker")
        buf += chunk
    return buf


def wait_ready(host: str, port: int, *, expect_brokers: int = 1, proc: subprocess.Popen | None = None,
               log_file: Path | None = None, timeout: float = START_TIMEOUT_S) -> None:
    """Poll metadata until `expect_brokers` brokers answer, printing progress; exit with the log tail on failure."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    last_note = 0.0
    last_err = "no answer yet"
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            fail(f"broker process exited with code {proc.returncode} during start-up", log_file)
        try:
            n = broker_count(host, port)
            if n >= expect_brokers:
                log(f"{host}:{port} answers metadata ({n} broker(s)) after {time.monotonic() - started:.1f}s.")
                return
            last_err = f"{n} of {expect_brokers} brokers registered"
        except OSError as exc:
            last_err = str(exc) or type(exc).__name__
        if time.monotonic() - last_note >= 3:
            log(f"Waiting for Kafka at {host}:{port} ({time.monotonic() - started:.0f}s, {last_err})...")
            last_note = time.monotonic()
        time.sleep(0.3)
    fail(f"broker at {host}:{port} did not answer within {timeout:.0f}s ({last_err})", log_file)


def wait_started(log_file: Path, proc: subprocess.Popen, timeout: float = START_TIMEOUT_S) -> None:
    """Wait for the broker's "Kafka Server started" line (KafkaRaftServer), exiting with the log tail on failure."""
    deadline, offset = time.monotonic() + timeout, log_file.stat().st_size if log_file.exists() else 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            fail(f"broker process exited with code {proc.returncode} during start-up", log_file)
        if log_file.exists() and b"Kafka Server started" in log_file.read_bytes()[offset:]:
            log("Kafka Server started.")
            return
        time.sleep(0.3)
    fail(f"no 'Kafka Server started' line within {timeout:.0f}s", log_file)


def fail(reason: str, log_file: Path | None) -> None:
    """Print why a start failed and the tail of the broker log, then exit 1."""
    print(f"[kafka] Start failed: {reason}.", file=sys.stderr)
    if log_file and log_file.exists():
        lines = log_file.read_text(errors="replace").splitlines()[-40:]
        print(f"[kafka] Last lines of {log_file}:", file=sys.stderr)
        for line in lines:
            print("    " + line, file=sys.stderr)
    sys.exit(1)


# --------------------------------------------------------------------------- nodes


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as dead.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def node_pid(node_dir: Path) -> int | None:
    """Return the pid of a running node, or None."""
    pid_file = node_dir / "broker.pid"
    if not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        return None
    return pid if _pid_alive(pid) else None


def cluster_id(path: Path) -> str:
    """Return the cluster id kept in `path`, creating a random one (KRaft base64url uuid) once."""
    if path.exists():
        return path.read_text().strip()
    raw = uuid.uuid4().bytes
    while base64.urlsafe_b64encode(raw).startswith(b"-"):
        raw = uuid.uuid4().bytes
    cid = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cid + "\n")
    return cid


def write_config(node: dict, base: Path, node_dir: Path, extra: dict[str, str]) -> Path:
    """Write the node's server.properties from a template plus per-node keys."""
    lines = base.read_text().splitlines()
    props = {
        "node.id": str(node["node_id"]),
        "listeners": f"PLAINTEXT://127.0.0.1:{node['port']},CONTROLLER://127.0.0.1:{node['controller']}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node['port']}",
        "log.dirs": str(node_dir / "data"),
        **extra,
    }
    keep = [ln for ln in lines if ln.split("=", 1)[0].strip() not in props]
    cfg = node_dir / "server.properties"
    cfg.write_text("\n".join(keep + [f"{k}={v}" for k, v in props.items()]) + "\n")
    return cfg


def start_node(node: dict, base: Path, cid: str, *, extra: dict[str, str] | None = None,
               wait: bool = True, expect_brokers: int = 1, format_args: list[str] | None = None,
               started_line: bool = False) -> subprocess.Popen | None:
    """Format (first time only) and start one combined node in the background."""
    node_dir = DATA / node["name"]
    if node_pid(node_dir):
        log(f"{node['name']} already running on 127.0.0.1:{node['port']} (pid {node_pid(node_dir)}).")
        if wait:
            wait_ready("127.0.0.1", node["port"], expect_brokers=expect_brokers)
        return None
    fetch()
    (node_dir / "logs").mkdir(parents=True, exist_ok=True)
    cfg = write_config(node, base, node_dir, extra or {})
    if not (node_dir / "data" / "meta.properties").exists():
        log(f"Formatting KRaft storage for {node['name']} (cluster id {cid}).")
        subprocess.run(
            java_cmd("kafka.tools.StorageTool", "format", "-t", cid, "-c", str(cfg), "-g", *(format_args or []),
                     logs_dir=node_dir / "logs"),
            check=True, stdout=subprocess.DEVNULL,
        )
    log_file = node_dir / "logs" / "server.log"
    out = open(node_dir / "logs" / "stdout.log", "ab")
    proc = subprocess.Popen(
        java_cmd("kafka.Kafka", str(cfg), heap=HEAP, logs_dir=node_dir / "logs"),
        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    (node_dir / "broker.pid").write_text(f"{proc.pid}\n")
    log(f"Started {node['name']} (pid {proc.pid}), data in {node_dir / 'data'}, log {log_file}.")
    if started_line:  # a SASL or TLS listener does not answer the plaintext metadata probe
        wait_started(log_file, proc)
    elif wait:
        wait_ready("127.0.0.1", node["port"], expect_brokers=expect_brokers, proc=proc, log_file=log_file)
    return proc


def stop_node(node: dict, *, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a node (SIGTERM, then SIGKILL after `timeout`) and forget its pid."""
    node_dir = DATA / node["name"]
    pid = node_pid(node_dir)
    if pid is None:
        log(f"{node['name']} is not running.")
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _pid_alive(pid):
        log(f"{node['name']} did not stop within {timeout:.0f}s; killing it.")
        os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.1)
    (node_dir / "broker.pid").unlink(missing_ok=True)
    log(f"Stopped {node['name']} (pid {pid}).")


def status(nodes: list[dict]) -> int:
    """Print each node's process and metadata state; return 0 when all answer."""
    rc = 0
    for node in nodes:
        pid = node_pid(DATA / node["name"])
        try:
            answer = f"answers metadata ({broker_count('127.0.0.1', node['port'])} broker(s))"
        except OSError as exc:
            answer, rc = f"no answer ({exc})", 1
        print(f"{node['name']}: 127.0.0.1:{node['port']} pid={pid or '-'} {answer}")
    return rc


# --------------------------------------------------------------------------- secured single nodes


def scram_users() -> list[tuple[str, str]]:
    """Return the SCRAM users (name, password) of ES_KAFKA_SCRAM_USERS, the first being the broker's own."""
    raw = os.environ.get("ES_KAFKA_SCRAM_USERS", "admin:admin-secret")
    users = [tuple(item.split(":", 1)) for item in raw.split(",") if ":" in item]
    if not users:
        sys.exit("kafka: ES_KAFKA_SCRAM_USERS must list name:password pairs")
    return users  # type: ignore[return-value]


def secure_node(mode: str) -> dict:
    """Return the node of a secured mode: its own name (data dir), port and controller port."""
    port = int(os.environ.get("ES_KAFKA_PORT", {"scram": "9692", "tls": "9792"}[mode]))
    return {"name": mode, "port": port, "controller": port + 1, "node_id": 1}


def secure_config(mode: str, node: dict) -> tuple[dict[str, str], list[str]]:
    """Return the broker keys and the storage-format arguments of a SCRAM or TLS client listener."""
    port, name = node["port"], ("SASL_PLAINTEXT" if mode == "scram" else "SSL")
    props = {
        "controller.quorum.voters": f"1@127.0.0.1:{node['controller']}",
        "listeners": f"{name}://127.0.0.1:{port},CONTROLLER://127.0.0.1:{node['controller']}",
        "advertised.listeners": f"{name}://127.0.0.1:{port}",
        "listener.security.protocol.map": f"{name}:{name},CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": name,
    }
    if mode == "scram":
        users = scram_users()
        broker_user, broker_password = users[0]
        props.update({
            "sasl.enabled.mechanisms": "SCRAM-SHA-256",
            "sasl.mechanism.inter.broker.protocol": "SCRAM-SHA-256",
            "listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{broker_user}" password="{broker_password}";',
        })
        scram = [arg for user, password in users
                 for arg in ("--add-scram", f"SCRAM-SHA-256=[name={user},password={password}]")]
        return props, scram
    tls = Path(os.environ.get("ES_KAFKA_TLS_DIR", DATA / "tls-certs"))
    needed = [tls / "ca.pem", tls / "server.pem"]
    if missing := [str(p) for p in needed if not p.exists()]:
        sys.exit(f"kafka: the TLS mode needs {', '.join(missing)} (a CA, and the server's PKCS#8 key followed "
                 "by its certificate chain; server.key-password beside them if the key is encrypted)")
    if (tls / "server.key-password").exists():
        props["ssl.key.password"] = (tls / "server.key-password").read_text().strip()
    props.update({
        "ssl.keystore.type": "PEM",
        "ssl.keystore.location": str(tls / "server.pem"),
        "ssl.truststore.type": "PEM",
        "ssl.truststore.location": str(tls / "ca.pem"),
        "ssl.client.auth": os.environ.get("ES_KAFKA_TLS_CLIENT_AUTH", "none"),
    })
    return props, []


# --------------------------------------------------------------------------- commands


def main(argv: list[str] | None = None) -> int:
    """Dispatch the sub-commands listed in the module docstring."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["fetch", "up", "down", "status", "cluster-up", "cluster-down",
                                       "cluster-status", "kill", "start-node", "wait", "secure-up", "secure-down"])
    p.add_argument("arg", nargs="?")
    args = p.parse_args(argv)
    single_base, cluster_base = HERE / "single.properties", HERE / "cluster.properties"
    if args.command == "fetch":
        fetch()
    elif args.command == "up":
        start_node(SINGLE, single_base, cluster_id(DATA / SINGLE["name"] / "cluster-id"),
                   extra={"controller.quorum.voters": f"1@127.0.0.1:{SINGLE['controller']}"})
    elif args.command == "down":
        stop_node(SINGLE)
    elif args.command == "status":
        return status([SINGLE])
    elif args.command == "cluster-up":
        cid = cluster_id(DATA / "cluster-id")
        for node in CLUSTER:
            start_node(node, cluster_base, cid, wait=False)
        wait_ready("127.0.0.1", CLUSTER[0]["port"], expect_brokers=3,
                   log_file=DATA / CLUSTER[0]["name"] / "logs" / "server.log")
        print("bootstrap servers: " + ",".join(f"127.0.0.1:{n['port']}" for n in CLUSTER))
    elif args.command == "cluster-down":
        for node in CLUSTER:
            stop_node(node)
    elif args.command == "cluster-status":
        return status(CLUSTER)
    elif args.command in ("kill", "start-node"):
        if args.arg not in ("1", "2", "3"):
            p.error(f"{args.command} needs a node number 1, 2 or 3, got {args.arg!r}")
        node = CLUSTER[int(args.arg) - 1]
        if args.command == "kill":
            stop_node(node, sig=signal.SIGKILL, timeout=10)
        else:
            start_node(node, cluster_base, cluster_id(DATA / "cluster-id"), wait=False)
            wait_ready("127.0.0.1", node["port"], expect_brokers=1,
                       log_file=DATA / node["name"] / "logs" / "server.log")
    elif args.command in ("secure-up", "secure-down"):
        if args.arg not in ("scram", "tls"):
            p.error(f"{args.command} needs a mode, scram or tls, got {args.arg!r}")
        node = secure_node(args.arg)
        if args.command == "secure-down":
            stop_node(node)
        else:
            props, format_args = secure_config(args.arg, node)
            start_node(node, single_base, cluster_id(DATA / node["name"] / "cluster-id"), extra=props,
                       wait=False, format_args=format_args, started_line=True)
    elif args.command == "wait":
        host, _, port = (args.arg or "127.0.0.1:9092").rpartition(":")
        wait_ready(host or "127.0.0.1", int(port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
