"""The README's front door stays true: every shell example of its API section runs as written
against `make demo`'s stack and prints what the README says; /docs works offline; Ctrl-C stops
everything.

The demo runs as users start it (``python -m poller.devstack demo``), on free ports in a temporary
workdir; the examples get those ports in place of the documented ones, nothing else changed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest
import requests

from poller.devstack import DEMO_PORTS, free_ports, port_taken, wait_for
from tests.support import ServiceProcess

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
STACK_UP = "the stack is up"
EXPECTED = "# => "


@dataclass
class Demo:
    proc: subprocess.Popen[bytes]
    output: Path
    ports: dict[str, int]  # documented port (as text) -> the one this demo uses

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['8000']}"

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            raise


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("POLLER_", "DEMO_"))}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    workdir = tmp_path_factory.mktemp("readme-demo")
    env = clean_env()
    ports: dict[str, int] = {}
    for port, free in zip(DEMO_PORTS, free_ports(len(DEMO_PORTS)), strict=True):
        ports[str(port.default)] = free
        env[port.variable] = str(free)
    output = workdir / "demo.out"
    with output.open("wb") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "poller.devstack", "demo", "--workdir", str(workdir / "state")],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
            start_new_session=True,
        )
    running = Demo(proc, output, ports)

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"the demo exited {proc.returncode}:\n{running.text()[-3000:]}")
        return STACK_UP in running.text()

    try:
        wait_for(up, 240, "the demo to say the stack is up", 0.5)
        yield running
    finally:
        running.stop()


def api_blocks() -> list[str]:
    """The shell code blocks of the README's API section."""
    text = README.read_text()
    section = text.split("\n## API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:sh|bash|shell)\n(.*?)```", section, flags=re.DOTALL)


def with_ports(block: str, ports: dict[str, int]) -> str:
    """The block with the demo's ports in place of the documented ones."""
    return re.sub(
        r"\b(localhost|127\.0\.0\.1):(8000|6066|7077|9092)\b",
        lambda match: f"{match[1]}:{ports[match[2]]}",
        block,
    )


def expected_pattern(line: str) -> re.Pattern[str]:
    """A ``# => ...`` line as a pattern: literal text, ``...`` standing for anything."""
    text = line.removeprefix(EXPECTED).strip()
    return re.compile(".*?".join(re.escape(part) for part in text.split("...")))


def test_every_api_example_runs_as_written_and_prints_what_it_says(demo: Demo) -> None:
    blocks = api_blocks()
    expectations = [line for block in blocks for line in block.splitlines() if EXPECTED in line]
    # The examples cover submit, adopt, read, list, both cancels and health: a README that lost
    # them would pass a loop over nothing.
    assert len(blocks) >= 7, blocks
    assert len(expectations) >= 8, blocks
    for block in blocks:
        run = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", with_ports(block, demo.ports)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            cwd=REPO,
            env=clean_env(),
        )
        assert run.returncode == 0, f"{block}\nfailed ({run.returncode}):\n{run.stdout}{run.stderr}"
        position = 0
        for line in block.splitlines():
            if not line.startswith(EXPECTED):
                continue
            found = expected_pattern(line).search(run.stdout, position)
            assert found, f"{block}\nprinted:\n{run.stdout}\nnot what it says:\n{line}"
            position = found.end()

    # What the cancels promise: both end CANCELLED with their events out, the killed driver
    # confirmed KILLED by Spark.
    def ended(request_id: str) -> dict[str, object]:
        record: dict[str, object] = requests.get(f"{demo.url}/jobs/{request_id}", timeout=10).json()
        return record

    wait_for(lambda: ended("adopted-1")["phase"] == "done", 60, "the kill's event")
    killed = ended("adopted-1")
    assert (killed["state"], killed["spark_state"]) == ("CANCELLED", "KILLED")
    assert (ended("nightly-2026-11-25")["state"], ended("nightly-2026-11-25")["phase"]) == (
        "CANCELLED",
        "done",
    )


def page_references(base: str, path: str) -> tuple[str, list[str]]:
    """The page's HTML and every URL it loads (scripts, styles, icons, the OpenAPI document)."""
    page = requests.get(f"{base}{path}", timeout=10)
    assert page.status_code == 200, page.text
    html = page.text
    found = re.findall(r"""(?:src|href|spec-url)=["']([^"']+)["']""", html)
    found += re.findall(r"""\burl:\s*["']([^"']+)["']""", html)
    return html, found


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_docs_work_offline(demo: Demo, path: str) -> None:
    html, references = page_references(demo.url, path)
    assert references, html
    assert not re.search("https?://", html), html
    for reference in references:
        url = urljoin(f"{demo.url}{path}", reference)
        assert urlsplit(url).netloc == urlsplit(demo.url).netloc, reference
        asset = requests.get(url, timeout=10)
        assert asset.status_code == 200, f"{reference}: {asset.status_code}"
        assert asset.content, reference
    if path == "/docs":
        # No validator badge: Swagger UI would send the document's address to a public host.
        assert '"validatorUrl": null' in html


def test_docs_and_their_assets_need_the_token_when_one_is_set(demo: Demo, tmp_path: Path) -> None:
    token = "readme-docs-token"
    env = {
        **clean_env(),
        "POLLER_API_TOKEN": token,
        "POLLER_DATABASE_URL": f"sqlite:///{tmp_path / 'poller.db'}",
        "POLLER_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{demo.ports['9092']}",
        "POLLER_SPARK_REST_URL": f"http://127.0.0.1:{demo.ports['6066']}",
        "POLLER_SPARK_MASTER_URL": f"spark://127.0.0.1:{demo.ports['7077']}",
    }
    service = ServiceProcess(env, tmp_path / "service.log").start()
    try:
        bearer = {"Authorization": f"Bearer {token}"}
        html = service.get("/docs", headers=bearer).text
        asset = re.findall(r'<script src="([^"]+)"', html)[0]
        for path in ["/docs", "/redoc", "/openapi.json", asset]:
            assert service.get(path).status_code == 401, path
            assert service.get(path, headers=bearer).status_code == 200, path
    finally:
        service.terminate()


def test_ctrl_c_stops_everything(demo: Demo) -> None:
    assert demo.stop() == 0, demo.text()[-3000:]
    assert "stopped" in demo.text()
    assert not [port for port in demo.ports.values() if port_taken(port)]
