"""deploy/: the image recipe, the Kubernetes manifests, the alert rules and the dashboard, each
checked by the tool that would refuse it in a platform team's pipeline, and for the facts a person
deploying it would check by hand.

The tools live in .venv-tools (``make tools``, which ``make test`` runs first): a missing tool fails
these tests rather than skipping them, so a green run always means the checks ran.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promql_parser as pq
import pytest
import yaml

from poller.config import Settings
from poller.migrate import MIGRATION_TIMEOUT_S

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OBSERVABILITY = DEPLOY / "observability"
TOOLS = ROOT / ".venv-tools" / "bin"
# The oldest Kubernetes the manifests are written for (the preStop sleep action is on by default
# from 1.30), and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
SHUTDOWN_GRACE_EXTRA_S = 30  # README: termination grace = POLLER_SHUTDOWN_TIMEOUT_S + 30 s
APP_UID = 10001
# checkov findings accepted on purpose; the reason of each is next to it in deployment.yaml.
ACCEPTED_SKIPS = {"CKV_K8S_35", "CKV_K8S_43"}
# Labels the scrape adds to every series (Prometheus' job and instance; namespace and pod from the
# usual Kubernetes relabelling).
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod"})
# Series Prometheus makes itself rather than scrapes.
PROMETHEUS_SERIES = frozenset({"up"})


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make tools` (`make test` does it first)")
    return path


def run_tool(
    name: str, *args: str | Path, input_text: str | None = None, timeout_s: float = 180
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{TOOLS}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run(
        [str(tool(name)), *map(str, args)],
        input=input_text,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=timeout_s,
        check=False,
    )


# -- the image -----------------------------------------------------------------------------------


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [value for kw, value in self.instructions if kw == keyword]

    def last(self, keyword: str) -> str:
        values = self.all(keyword)
        assert values, f"no {keyword} in the stage FROM {self.base}"
        return values[-1]

    def env(self) -> dict[str, str]:
        pairs: dict[str, str] = {}
        for value in self.all("ENV"):
            for match in re.finditer(r'(\w+)=("[^"]*"|\S+)', value):
                pairs[match.group(1)] = match.group(2).strip('"')
        return pairs


def dockerfile_stages(path: Path = DEPLOY / "Dockerfile") -> list[Stage]:
    """The Dockerfile's stages, each with its instructions (continuation lines joined)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), " ".join(value.split())
        if keyword == "FROM":
            base, _, name = value.partition(" AS ")
            stages.append(Stage(base=base.strip(), name=name.strip() or None))
        elif stages:
            stages[-1].instructions.append((keyword, value))
    return stages


def test_image_is_built_in_two_stages_from_one_pinned_base() -> None:
    stages = dockerfile_stages()
    assert [stage.name for stage in stages] == ["builder", None]
    bases = {stage.base for stage in stages}
    assert len(bases) == 1, bases
    [base] = bases
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base), base


def test_image_runs_as_a_numeric_unprivileged_user() -> None:
    final = dockerfile_stages()[-1]
    user, _, group = final.last("USER").partition(":")
    assert user == str(APP_UID)
    assert group.isdigit(), group
    assert int(group) != 0
    # Nothing runs as root after the switch.
    keywords = [kw for kw, _ in final.instructions]
    assert "RUN" not in keywords[keywords.index("USER") :]


def test_image_starts_spark_poller_serve() -> None:
    final = dockerfile_stages()[-1]
    command = json.loads(final.last("ENTRYPOINT")) + json.loads(final.last("CMD"))
    assert command == ["spark-poller", "serve"]


def test_image_healthcheck_asks_healthz_with_python() -> None:
    final = dockerfile_stages()[-1]
    check = final.last("HEALTHCHECK")
    options, _, command = check.partition(" CMD ")
    argv = json.loads(command)
    assert argv[:2] == ["python", "-c"], argv  # the slim base has no curl or wget
    assert "/healthz" in argv[2]
    assert "POLLER_PORT" in argv[2]
    compile(argv[2], "HEALTHCHECK", "exec")
    assert "--timeout=" in options
    assert "--start-period=" in options


def test_final_stage_has_no_build_tools() -> None:
    final = dockerfile_stages()[-1]
    commands = " ".join(final.all("RUN"))
    for tool_name in ("gcc", "g++", "build-essential", "make ", "apt-get install", "pip "):
        assert tool_name not in commands, tool_name
    # It takes the installed virtualenv from the builder, not the wheels or the sources.
    assert final.all("COPY") == ["--from=builder /opt/spark-poller /opt/spark-poller"]


def test_image_listens_everywhere_and_keeps_its_database_on_the_volume() -> None:
    final = dockerfile_stages()[-1]
    env = final.env()
    assert env["POLLER_HOST"] == "0.0.0.0"
    [volume] = json.loads(final.last("VOLUME"))
    database = env["POLLER_DATABASE_URL"]
    assert database.startswith(f"sqlite:///{volume}/"), (database, volume)
    assert final.last("EXPOSE") == env["POLLER_PORT"] == "8000"
    assert f"--owner={APP_UID}" in final.last("RUN")
    assert volume in final.last("RUN")


def test_build_context_holds_only_what_the_image_is_built_from() -> None:
    # docker-py's implementation of .dockerignore (installed with checkov) lists what a build of
    # this repository would send.
    script = (
        "import json, sys\n"
        "from docker.utils.build import exclude_paths\n"
        "patterns = [p for p in open('.dockerignore').read().splitlines()"
        " if p.strip() and not p.startswith('#')]\n"
        "print(json.dumps(sorted(exclude_paths('.', patterns, dockerfile='no-such-file'))))\n"
    )
    result = run_tool("python", "-c", script)
    assert result.returncode == 0, result.stderr
    sent = {path for path in json.loads(result.stdout) if (ROOT / path).is_file()}
    assert {"pyproject.toml", "README.md", "poller/__init__.py", "poller/py.typed"} <= sent
    # Docker sends .dockerignore itself along whatever it says.
    allowed = {"pyproject.toml", "README.md", ".dockerignore"}
    strays = sorted(p for p in sent if p not in allowed and not p.startswith("poller/"))
    assert strays == []
    generated = sorted(p for p in sent if "__pycache__" in p or re.search(r"\.(db|pyc|lease)", p))
    assert generated == []


# -- Kubernetes ----------------------------------------------------------------------------------


def yaml_documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """What `kubectl apply -k` would apply, for the base and each overlay."""
    out: dict[str, list[dict[str, Any]]] = {}
    for name, path in {"base": K8S / "base", "postgresql": K8S / "overlays" / "postgresql"}.items():
        result = run_tool("kubectl", "kustomize", path)
        assert result.returncode == 0, result.stderr
        out[name] = yaml_documents(result.stdout)
    return out


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [found] = [doc for doc in docs if doc["kind"] == kind]
    return found


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    found: list[dict[str, Any]] = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(found) == 1
    return found[0]


def validate(path: Path, version: str) -> tuple[set[str], str]:
    """kubernetes-validate --strict on one file: the resources that passed, and its output."""
    result = run_tool("kubernetes-validate", "--strict", "-k", version, path)
    passed = set(re.findall(r" passed for resource (\S+) against", result.stdout))
    return passed, result.stdout + result.stderr


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(
    version: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    files = sorted((K8S / "base").glob("*.yaml"))
    files.remove(K8S / "base" / "kustomization.yaml")  # kustomize's own, not an API object
    for name, docs in rendered.items():
        files.append(tmp_path / f"{name}.yaml")
        files[-1].write_text(yaml.safe_dump_all(docs))
    for path in files:
        expected = {
            f"{d['kind'].lower()}/{d['metadata']['name']}" for d in yaml_documents(path.read_text())
        }
        passed, output = validate(path, version)
        # Every resource passed: an unknown kind only warns, and would not be checked at all.
        assert passed == expected, output


def test_strict_validation_refuses_a_misspelt_field(tmp_path: Path) -> None:
    deployment = yaml.safe_load((K8S / "base" / "deployment.yaml").read_text())
    deployment["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(deployment))
    passed, output = validate(path, K8S_VERSIONS[0])
    assert passed == set()
    assert "imagePullPolicyy" in output


def test_overlay_patches_target_resources_of_the_base() -> None:
    base = yaml.safe_load((K8S / "base" / "kustomization.yaml").read_text())
    resources = {
        (doc["kind"], doc["metadata"]["name"])
        for file in base["resources"]
        for doc in yaml_documents((K8S / "base" / file).read_text())
    }
    overlay_dir = K8S / "overlays" / "postgresql"
    overlay = yaml.safe_load((overlay_dir / "kustomization.yaml").read_text())
    assert overlay["resources"] == ["../../base"]
    assert overlay["patches"], "the overlay patches nothing"
    for patch in overlay["patches"]:
        doc = yaml.safe_load((overlay_dir / patch["path"]).read_text())
        assert (doc["kind"], doc["metadata"]["name"]) in resources, patch


def test_base_runs_one_pod_that_stops_in_time(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    deployment = one(docs, "Deployment")
    spec, pod = deployment["spec"], deployment["spec"]["template"]["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}  # the SQLite volume is ReadWriteOnce
    shutdown_s = float(one(docs, "ConfigMap")["data"]["POLLER_SHUTDOWN_TIMEOUT_S"])
    assert pod["terminationGracePeriodSeconds"] == shutdown_s + SHUTDOWN_GRACE_EXTRA_S
    assert container(docs)["args"] == ["serve"]
    image = container(docs)["image"]
    assert re.fullmatch(r"spark-poller:\d+\.\d+\.\d+", image), image


def test_base_probes_and_scrape_point_at_the_service(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["base"]
    main = container(docs)
    [port] = main["ports"]
    assert port == {"name": "http", "containerPort": 8000, "protocol": "TCP"}
    probes = {
        kind: main[kind]["httpGet"] for kind in ("startupProbe", "livenessProbe", "readinessProbe")
    }
    assert probes == {
        "startupProbe": {"path": "/healthz", "port": "http"},
        "livenessProbe": {"path": "/healthz", "port": "http"},
        "readinessProbe": {"path": "/readyz", "port": "http"},
    }
    annotations = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port["containerPort"])
    assert annotations["prometheus.io/path"] == "/metrics"
    service = one(docs, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    for selector in (
        service["spec"]["selector"],
        one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    ):
        assert selector.items() <= pod_labels.items()
    [rule] = one(docs, "NetworkPolicy")["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8000}]


def test_the_startup_probe_waits_out_a_schema_migration(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """A start runs the migrations before it binds its port; a probe that gives up sooner
    restarts the pod mid-migration (rolled back), again and again."""
    for docs in rendered.values():
        probe = container(docs)["startupProbe"]
        budget_s = probe["periodSeconds"] * probe["failureThreshold"]
        assert budget_s >= MIGRATION_TIMEOUT_S + 10


def test_base_pod_is_locked_down(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["base"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    account = one(docs, "ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == APP_UID
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container(docs)["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container(docs)["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys() & resources["limits"].keys()
    # The only writable places: the SQLite volume (a claim) and /tmp.
    mounts = {m["mountPath"]: m["name"] for m in container(docs)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert set(mounts) == {"/var/lib/spark-poller", "/tmp"}
    claim = volumes[mounts["/var/lib/spark-poller"]]["persistentVolumeClaim"]["claimName"]
    assert claim == one(docs, "PersistentVolumeClaim")["metadata"]["name"]
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_postgresql_overlay_reads_the_database_url_from_the_secret(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["postgresql"]
    env = {item["name"]: item for item in container(docs).get("env", [])}
    source = env["POLLER_DATABASE_URL"]
    assert "value" not in source
    reference = source["valueFrom"]["secretKeyRef"]
    assert reference["key"] == "POLLER_DATABASE_URL"
    assert not reference.get("optional", False)  # no silent fall-back to SQLite
    assert "POLLER_DATABASE_URL" not in one(docs, "ConfigMap")["data"]
    # No SQLite volume, claim or mount left behind.
    assert not [doc for doc in docs if doc["kind"] == "PersistentVolumeClaim"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    assert [m["mountPath"] for m in container(docs)["volumeMounts"]] == ["/tmp"]
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    strategy = one(docs, "Deployment")["spec"]["strategy"]
    assert strategy["type"] == "RollingUpdate"
    assert strategy["rollingUpdate"]["maxUnavailable"] == 0


def test_postgresql_overlay_runs_three_replicas_that_survive_a_drain(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """Three pods, one per node where possible, two always left by voluntary disruptions; each
    named after its pod in the lease table and its events."""
    docs = rendered["postgresql"]
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    [term] = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = term["podAffinityTerm"]["labelSelector"]["matchLabels"]
    assert selector.items() <= labels.items()
    budget = one(docs, "PodDisruptionBudget")["spec"]
    assert budget == {"minAvailable": 2, "selector": budget["selector"]}
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    env = {item["name"]: item for item in container(docs).get("env", [])}
    assert env["POLLER_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Shards that share evenly between the pods, and between those a drain leaves.
    shards = int(env["POLLER_SHARDS"]["value"])
    assert shards % 3 == 0
    assert shards % 2 == 0


def test_no_secret_is_kept_in_the_manifests(
    rendered: dict[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for docs in rendered.values():
        assert not [doc for doc in docs if doc["kind"] == "Secret"]
        [reference] = [
            source["secretRef"] for source in container(docs)["envFrom"] if "secretRef" in source
        ]
        assert reference["name"] == "spark-poller-secrets"
    # Every ConfigMap key is a setting the service knows, none of them secret, and together with
    # the image's environment they make a configuration the service accepts.
    data = one(rendered["base"], "ConfigMap")["data"]
    secret_fields = {
        name for name, info in Settings.model_fields.items() if "Secret" in str(info.annotation)
    }
    for key in data:
        assert key.startswith("POLLER_"), key
        name = key.removeprefix("POLLER_").lower()
        assert name in Settings.model_fields, f"{key} is no setting"
        assert name not in secret_fields, f"{key} is a secret"
    for key in os.environ:
        if key.startswith("POLLER_"):
            monkeypatch.delenv(key)
    for key, value in {**dockerfile_stages()[-1].env(), **data}.items():
        if key.startswith("POLLER_"):
            monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0"
    assert settings.shutdown_timeout_s == float(data["POLLER_SHUTDOWN_TIMEOUT_S"])


def test_checkov_finds_nothing(tmp_path: Path) -> None:
    result = run_tool(
        "checkov",
        "--directory",
        DEPLOY,
        "--framework",
        "dockerfile",
        "kustomize",
        "secrets",
        "--skip-download",
        "--output",
        "json",
    )
    (tmp_path / "checkov.json").write_text(result.stdout)
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {report["check_type"]: report for report in reports}
    failed = [
        f"{check['check_id']} {check['resource']} ({check['file_path']})"
        for report in reports
        for check in report["results"]["failed_checks"]
    ]
    assert failed == []
    assert result.returncode == 0, result.stderr[-2000:]
    # The Kubernetes checks ran on what kustomize builds, base and overlay both (checkov skips
    # kustomize silently when it finds no kubectl).
    assert {"dockerfile", "kustomize"} <= by_type.keys(), sorted(by_type)
    checked = {check["resource"] for check in by_type["kustomize"]["results"]["passed_checks"]}
    for prefix in ("base:", "overlay:overlays/postgresql:"):
        assert any(r.startswith(f"{prefix}Deployment.") for r in checked), (prefix, checked)
    skipped = [check for report in reports for check in report["results"]["skipped_checks"]]
    assert {check["check_id"] for check in skipped} == ACCEPTED_SKIPS
    for check in skipped:
        assert len(check["check_result"].get("suppress_comment", "")) > 40, check


# -- alert rules and dashboard -------------------------------------------------------------------


ALERTS = OBSERVABILITY / "alerts.yaml"
DASHBOARD = OBSERVABILITY / "grafana-dashboard.json"
REQUIRED_ALERTS = {
    "SparkPollerDown",
    "SparkPollerAbsent",
    "SparkPollerNoLeader",
    "SparkPollerSchedulerLagHigh",
    "SparkPollerPollErrorRateHigh",
    "SparkPollerPublishFailing",
    "SparkPollerPublishStalled",
    "SparkPollerPublishBacklogGrowing",
    "SparkPollerRequestStuck",
    "SparkPollerSubmitStuck",
}
GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase", "delta", "deriv"})


def alert_rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(ALERTS.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def promql(text: str) -> str:
    """A Grafana query as Prometheus receives it (variables substituted)."""
    return GRAFANA_VARIABLE.sub(lambda m: "5m" if m.group(1) == "__rate_interval" else ".*", text)


def expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every alert and every dashboard query."""
    found = [(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()]
    for panel in panels():
        for target in panel["targets"]:
            found.append((f"panel {panel['title']!r}", promql(target["expr"])))
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("definition", "")
        match = re.fullmatch(r"label_values\((.+), *(\w+)\)", promql(query))
        if match:  # label_values(selector, label): the label must exist on that series
            found.append((f"variable {variable['name']}", f"count by ({match[2]}) ({match[1]})"))
    return found


@dataclass(frozen=True)
class Selector:
    """A series selector in a query: its metric, the labels it matches on, its enclosing calls."""

    metric: str
    labels: frozenset[str]
    calls: tuple[str, ...]


def children(node: pq.Expr) -> list[pq.Expr]:
    if isinstance(node, pq.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, pq.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, pq.Call):
        return [arg for arg in node.args if isinstance(arg, pq.Expr)]
    if isinstance(node, pq.AggregateExpr | pq.UnaryExpr | pq.ParenExpr | pq.SubqueryExpr):
        return [node.expr]
    return []


def selectors(node: pq.Expr, calls: tuple[str, ...] = ()) -> Iterator[Selector]:
    if isinstance(node, pq.VectorSelector):
        matchers = node.matchers.matchers
        name = node.name or next(m.value for m in matchers if m.name == "__name__")
        yield Selector(name, frozenset(m.name for m in matchers if m.name != "__name__"), calls)
        return
    if isinstance(node, pq.Call):
        calls = (*calls, node.func.name)
    for child in children(node):
        yield from selectors(child, calls)


def groupings(node: pq.Expr) -> Iterator[tuple[frozenset[str], list[Selector]]]:
    """Each `by (...)`/`on (...)` label list, with the selectors whose labels it may name."""
    lists: list[list[str]] = []
    if isinstance(node, pq.AggregateExpr) and node.modifier is not None:
        lists.append(node.modifier.labels)
    if isinstance(node, pq.BinaryExpr) and node.modifier is not None:
        if node.modifier.matching is not None:
            lists.append(node.modifier.matching.labels)
        lists.append(node.modifier.group_labels or [])
    for labels in lists:
        if labels:
            yield frozenset(labels), list(selectors(node))
    for child in children(node):
        yield from groupings(child)


def test_alert_rules_pass_promtool() -> None:
    result = run_tool("promtool", "check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_on_its_trouble_and_not_on_look_alikes() -> None:
    # alerts.test.yaml: series for each alert, with the cases it must not fire on.
    result = run_tool("promtool", "test", "rules", OBSERVABILITY / "alerts.test.yaml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_say_how_bad_and_what_to_do() -> None:
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} >= REQUIRED_ALERTS
    for rule in rules:
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"]
        assert len(rule["annotations"]["description"]) > 80
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]


def test_queries_parse_and_use_counters_and_histograms_as_such() -> None:
    for where, expr in expressions():
        parsed = pq.parse(expr)
        for selector in selectors(parsed):
            metric = selector.metric
            assert metric.startswith("spark_poller_") or metric in PROMETHEUS_SERIES, (
                where,
                metric,
            )
            if where.startswith("variable"):
                continue  # label_values() lists label values; it reads no sample
            if metric.endswith(("_total", "_bucket")):
                assert RANGE_FUNCTIONS & set(selector.calls), f"{where}: {metric} read raw"
            if metric.endswith("_bucket"):
                assert "histogram_quantile" in selector.calls, (where, metric)


def test_dashboard_shows_every_figure_an_operator_asks_for() -> None:
    used = {s.metric for _, expr in expressions() for s in selectors(pq.parse(expr))}
    wanted = {
        "spark_poller_requests_in_flight",
        "spark_poller_polls_total",
        "spark_poller_poll_errors_total",
        "spark_poller_spark_request_duration_seconds_bucket",
        "spark_poller_events_published_total",
        "spark_poller_publish_duration_seconds_bucket",
        "spark_poller_publish_failures_total",
        "spark_poller_events_pending",
        "spark_poller_submit_to_event_seconds_bucket",
        "spark_poller_driver_end_to_event_seconds_bucket",
        "spark_poller_scheduler_lag_seconds_bucket",
        "spark_poller_job_store_jobs",
        "spark_poller_scheduler_lease_held",
        "spark_poller_http_requests_total",
    }
    panel_metrics = {
        s.metric
        for panel in panels()
        for t in panel["targets"]
        for s in selectors(pq.parse(promql(t["expr"])))
    }
    assert wanted <= panel_metrics, sorted(wanted - panel_metrics)
    assert used  # (and the alerts' own are checked against a live service in integration)


def test_dashboard_layout_is_sound() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for panel in board["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not area & cells, f"{panel['title']!r} overlaps another panel"
        cells |= area
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [target["refId"] for target in panel["targets"]]
            assert refs, panel["title"]
            assert len(refs) == len(set(refs)), panel["title"]
