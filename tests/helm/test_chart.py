"""The Helm chart, checked with Helm's own engine (helm-python-sdk wraps Helm's Go SDK:
render and lint offline) and every rendered manifest validated against the Kubernetes
schemas (kubernetes-validate). The rendered service configs must pass the real binaries'
--check-config; bad values must fail the chart's values.schema.json naming the key."""

import os
import pathlib
import subprocess
import tempfile

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "sightline"
KUBE = "1.37.0"

# The defaults plus what the chart requires: API tokens (or allowAnonymous) and the
# ClickHouse users' passwords (or an existing secret).
PASSWORDS = {"ingestPassword": "p1", "queryPassword": "p2"}
MINIMAL = {"query": {"tokens": ["a-token-of-20-chars!"]}, "clickhouse": PASSWORDS}

VALUE_SETS = {
    "defaults with tokens": MINIMAL,
    "anonymous on purpose, replay on, no policies": {
        "clickhouse": PASSWORDS,
        "query": {"allowAnonymous": True, "replay": {"enabled": True, "maxRate": 100}},
        "networkPolicy": {"enabled": False},
    },
    "everything on": {
        "nats": {"url": "tls://nats.example:4222", "credentials": "-----BEGIN NATS USER JWT-----"},
        "clickhouse": {"url": "https://ch.example:8443", "ingestPassword": "p1", "queryPassword": "p2"},
        "image": {"registry": "registry.example", "pullSecrets": [{"name": "regcred"}]},
        "ingest": {"autoscaling": {"enabled": True}, "retention": {"eventsDays": 7}},
        "query": {"tokens": ["a-token-of-20-chars!"], "service": {"type": "LoadBalancer", "port": 80}},
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "existing secrets, query only": {
        "clickhouse": {"existingSecret": "ch-creds"},
        "nats": {"existingSecret": "nats-creds"},
        "query": {"existingTokenSecret": "api-tokens"},
        "ingest": {"enabled": False},
    },
}


def render(values):
    chart = helm.Chart.load(str(CHART))
    chart.validate_schema(values)
    manifests = chart.render(values, name="sl", namespace="sightline", is_install=True)
    docs = []
    for path, text in manifests.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def binary(name):
    target = os.environ.get("CARGO_TARGET_DIR", str(CHART.parents[1] / "target"))
    path = pathlib.Path(target) / "debug" / name
    if not path.exists():
        pytest.fail(f"{path} is missing: build the workspace first (scripts/test.sh does)")
    return path


def test_lint_is_clean():
    report = helm.lint(str(CHART), strict=True, kube_version=f"v{KUBE}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not problems, report


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_is_valid_kubernetes(name):
    docs = render(VALUE_SETS[name])
    kinds = sorted(d["kind"] for d in docs)
    assert "ConfigMap" in kinds and "Deployment" in kinds, kinds
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            # A CRD: not in the Kubernetes schemas; check what Prometheus needs.
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["endpoints"][0]["path"] == "/metrics"
            assert doc["metadata"]["labels"]["release"] == "prom"
            continue
        kubernetes_validate.validate(doc, KUBE, strict=True)
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["resources"]["limits"] and container["resources"]["requests"]
            # Every mounted secret or config volume exists in the pod.
            volumes = {v["name"] for v in pod["volumes"]}
            assert {m["name"] for m in container["volumeMounts"]} <= volumes


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_configs_pass_the_binaries_check(name):
    docs = render(VALUE_SETS[name])
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    # The secrets as the pods mount them: the rendered ones' contents, or stand-ins for
    # existing secrets the operator made.
    made = {}
    for secret in (d for d in docs if d["kind"] == "Secret"):
        made.update(secret["stringData"])
    with tempfile.TemporaryDirectory() as secrets:
        for path, key, stand_in in [
            ("clickhouse/ingest-password", "ingest-password", "p"),
            ("clickhouse/query-password", "query-password", "p"),
            ("nats/nats.creds", "nats.creds", "creds"),
            ("tokens/tokens", "tokens", "an-operator-token-0001"),
        ]:
            file = pathlib.Path(secrets) / path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(made.get(key, stand_in) + "\n")
        for key, binary_name in [("ingest.toml", "ingest-service"), ("query.toml", "query-service")]:
            text = config["data"][key].replace("/etc/sightline/secrets", secrets)
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(text)
                f.flush()
                run = subprocess.run(
                    [binary(binary_name), "--config", f.name, "--check-config"],
                    capture_output=True,
                    text=True,
                )
            assert run.returncode == 0, f"{key}:\n{text}\n{run.stderr[:2000]}"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_each_workload_mounts_only_its_own_clickhouse_password(name):
    """The query pods read with the read-only user: they must not be able to mount the ingest
    user's password, nor the ingest pods the query user's."""
    docs = render(VALUE_SETS[name])
    clickhouse_secret = next(
        v["secret"]["secretName"]
        for d in docs
        if d["kind"] == "Deployment"
        for v in d["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "clickhouse"
    )
    checked = 0
    for d in docs:
        if d["kind"] != "Deployment":
            continue
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        for volume in d["spec"]["template"]["spec"]["volumes"]:
            secret = volume.get("secret") or {}
            if secret.get("secretName") != clickhouse_secret:
                continue
            keys = [item["key"] for item in secret.get("items", [])]
            assert keys == [f"{component}-password"], (component, volume)
            checked += 1
    assert checked >= 1


def test_stream_replicas_reach_ingest_and_its_check():
    """The events and dead-letter streams' replicas are a chart value: a cluster needs 3, or
    an event the edge counts as sent lives on one server only."""
    for values, replicas in [(MINIMAL, 1), ({**MINIMAL, "ingest": {"stream": {"replicas": 3}}}, 3)]:
        config = next(d for d in render(values) if d["kind"] == "ConfigMap")
        ingest = config["data"]["ingest.toml"]
        stream = ingest.split("[stream]", 1)[1].split("[", 1)[0]
        assert f"replicas = {replicas}\n" in stream, ingest


def test_leader_election_gets_exactly_its_lease_rbac():
    docs = render(MINIMAL)
    role = next(d for d in docs if d["kind"] == "Role")
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["sightline-ingest", "sightline-ingest-schema"],
            "verbs": ["get", "update"],
        },
    ]
    binding = next(d for d in docs if d["kind"] == "RoleBinding")
    account = next(d for d in docs if d["kind"] == "ServiceAccount")
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    pods = {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] == "Deployment"}
    ingest = next(p for n, p in pods.items() if n.endswith("-ingest"))
    query = next(p for n, p in pods.items() if n.endswith("-query"))
    assert ingest["serviceAccountName"] == account["metadata"]["name"]
    assert ingest["automountServiceAccountToken"] is True
    assert query["automountServiceAccountToken"] is False, "the query service needs no API access"
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["ingest.toml"]
    assert 'mode = "kubernetes"' in config
    off = render({**MINIMAL, "ingest": {"leaderElection": {"enabled": False}}})
    assert not [d for d in off if d["kind"] in ("Role", "RoleBinding", "ServiceAccount")]
    assert 'mode = "off"' in next(d for d in off if d["kind"] == "ConfigMap")["data"]["ingest.toml"]


def test_autoscaling_replaces_fixed_replicas_and_disabled_parts_vanish():
    docs = render(VALUE_SETS["everything on"])
    ingest = next(d for d in docs if d["kind"] == "Deployment" and "ingest" in d["metadata"]["name"])
    assert "replicas" not in ingest["spec"]
    hpa = next(d for d in docs if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == ingest["metadata"]["name"]
    docs = render(VALUE_SETS["existing secrets, query only"])
    assert not [d for d in docs if "ingest" in d["metadata"]["name"]]
    assert not [d for d in docs if d["kind"] == "Secret"], "existing secrets are used, none made"


def test_a_changed_secret_or_config_rolls_the_pods():
    def annotations(values):
        return {
            d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]
            for d in render(values)
            if d["kind"] == "Deployment"
        }

    base = annotations(VALUE_SETS["everything on"])
    assert len(base) == 2
    password = annotations({**VALUE_SETS["everything on"], "clickhouse": {
        **VALUE_SETS["everything on"]["clickhouse"], "queryPassword": "p3"}})
    retention = annotations({**VALUE_SETS["everything on"], "ingest": {
        **VALUE_SETS["everything on"]["ingest"], "retention": {"eventsDays": 8}}})
    for name, before in base.items():
        assert password[name]["checksum/secret"] != before["checksum/secret"], name
        assert password[name]["checksum/config"] == before["checksum/config"], name
        assert retention[name]["checksum/config"] != before["checksum/config"], name
        assert retention[name]["checksum/secret"] == before["checksum/secret"], name


@pytest.mark.parametrize(
    "values, key",
    [
        ({"nats": {"url": "http://nats:4222"}}, "/nats/url"),
        ({"clickhouse": {"url": "clickhouse:8123"}}, "/clickhouse/url"),
        ({"ingest": {"replicas": -1}}, "/ingest/replicas"),
        ({"query": {"tokens": ["short"]}}, "/query/tokens"),
        ({"ingest": {"batch": {"maxRows": 0}}}, "/ingest/batch/maxRows"),
        ({"query": {"service": {"type": "Ingress"}}}, "/query/service/type"),
        ({"ingest": {"replcas": 3}}, "replcas"),
        ({"ingest": {"stream": {"replicas": 2}}}, "/ingest/stream/replicas"),
        ({"ingest": {"leaderElection": {"leaseName": "Bad_Name"}}}, "/ingest/leaderElection/leaseName"),
    ],
)
def test_bad_values_fail_the_schema_naming_the_key(values, key):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(Exception) as error:
        chart.validate_schema(chart.merge_values(values))
    assert key in str(error.value), str(error.value)


def test_without_tokens_the_chart_refuses_to_render_unless_anonymous_is_explicit():
    """An API without authentication must be a decision (a breaking change in 0.2.0)."""
    with pytest.raises(Exception) as refused:
        render({})
    assert "query.allowAnonymous=true" in str(refused.value), refused.value
    docs = render({"query": {"allowAnonymous": True}, "clickhouse": PASSWORDS})
    query = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"]
    assert "[auth]" not in query
    # Query disabled: no API, nothing to refuse.
    assert render({"query": {"enabled": False}, "clickhouse": {"ingestPassword": "p1"}})


def test_replay_is_off_unless_enabled():
    def replay(values):
        query = next(d for d in render(values) if d["kind"] == "ConfigMap")["data"]["query.toml"]
        return query.split("[replay]", 1)[1].split("[", 1)[0]

    assert "enabled = false\n" in replay(MINIMAL)
    on = replay({**MINIMAL, "query": {**MINIMAL["query"], "replay": {"enabled": True, "subjectPrefix": "lab."}}})
    assert "enabled = true\n" in on and 'subject_prefix = "lab."' in on, on


def test_network_policies_admit_only_the_named_peers():
    def policies(values):
        return {d["metadata"]["name"]: d["spec"] for d in render(values) if d["kind"] == "NetworkPolicy"}

    ingress_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    same_namespace = {"podSelector": {}}
    specs = policies(MINIMAL)
    assert set(specs) == {"sl-sightline-ingest", "sl-sightline-query"}, specs
    query, ingest = specs["sl-sightline-query"], specs["sl-sightline-ingest"]
    assert query["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "query"
    assert query["policyTypes"] == ["Ingress"]
    assert query["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}],
                                 "from": [same_namespace, ingress_ns, monitoring]}]
    # Ingest serves only /metrics and probes: no ingress controller.
    assert ingest["ingress"][0]["from"] == [same_namespace, monitoring]
    mine = {"podSelector": {"matchLabels": {"app": "my-gateway"}}}
    named = policies({**MINIMAL, "networkPolicy": {"apiFrom": [mine], "metricsFrom": []}})
    assert named["sl-sightline-query"]["ingress"][0]["from"] == [same_namespace, mine]
    assert not policies({**MINIMAL, "networkPolicy": {"enabled": False}})


@pytest.mark.parametrize("missing", ["ingestPassword", "queryPassword"])
def test_a_clickhouse_user_without_a_password_is_refused(missing):
    passwords = {k: v for k, v in PASSWORDS.items() if k != missing}
    with pytest.raises(Exception) as refused:
        render({**MINIMAL, "clickhouse": passwords})
    assert f"clickhouse.{missing} is empty" in str(refused.value), refused.value
    # An existing secret holds them instead.
    assert render({**MINIMAL, "clickhouse": {"existingSecret": "ch-creds"}})
