"""The Helm chart, checked with Helm's own engine (helm-python-sdk wraps Helm's Go SDK:
render and lint offline) and every rendered manifest validated against the Kubernetes
schemas (kubernetes-validate). The rendered service configs must pass the real binaries'
--check-config with the secret files exactly as each pod mounts them; each pod reaches only
its own secrets' keys; bad values must fail the chart's values.schema.json naming the key."""

import os
import pathlib
import subprocess
import tempfile
import tomllib

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
        "nats": {
            "url": "tls://nats.example:4222",
            "credentials": "-----BEGIN NATS USER JWT----- ingest",
            "queryCredentials": "-----BEGIN NATS USER JWT----- query",
        },
        "clickhouse": {"url": "https://ch.example:8443", "ingestPassword": "p1", "queryPassword": "p2"},
        "image": {"registry": "registry.example", "pullSecrets": [{"name": "regcred"}]},
        "ingest": {"autoscaling": {"enabled": True}, "retention": {"eventsDays": 7},
                   "snapshots": {"maxBytes": 8388608, "ownerWaitSecs": 2592000}},
        "query": {
            "tokens": ["a-token-of-20-chars!"],
            "service": {"type": "LoadBalancer", "port": 80},
            "replay": {"enabled": True},
            "snapshots": {"thumbnailCacheBytes": 0, "thumbnailQuality": 100},
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
    },
    "existing secrets, query only": {
        "clickhouse": {"existingSecret": "ch-creds"},
        "nats": {"existingSecret": "nats-creds"},
        "query": {"existingTokenSecret": "api-tokens"},
        "ingest": {"enabled": False},
    },
    "named clients, replay with its own NATS user": {
        "nats": {"credentials": "ingest-creds", "queryCredentials": "query-creds"},
        "clickhouse": PASSWORDS,
        "query": {
            "clients": [
                {"name": "grafana", "scopes": ["read"], "token": "grafana-token-0001"},
                {"name": "ops_team-2", "scopes": ["read", "export", "replay"], "token": "ops-token-00000002"},
            ],
            "replay": {"enabled": True},
        },
    },
    "named clients from existing secrets": {
        "clickhouse": {"existingSecret": "ch-creds"},
        "nats": {"existingSecret": "nats-creds"},
        "query": {
            "clients": [{"name": "grafana", "scopes": ["read"]}, {"name": "exporter", "scopes": ["export"]}],
            "existingClientSecret": "api-clients",
        },
    },
    "snapshots only, the deprecated replayCredentials": {
        "nats": {"credentials": "ingest-creds", "replayCredentials": "replay-creds"},
        "clickhouse": PASSWORDS,
        "query": {"tokens": ["a-token-of-20-chars!"], "snapshots": {"thumbnailQuality": 1}},
        "ingest": {"snapshots": {"maxBytes": 1024, "ownerWaitSecs": 1}},
    },
    "NATS with authentication, query off NATS": {
        "nats": {"credentials": "ingest-creds"},
        "clickhouse": PASSWORDS,
        "query": {"tokens": ["a-token-of-20-chars!"], "snapshots": {"enabled": False}},
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


def notes(values):
    chart = helm.Chart.load(str(CHART))
    manifests = chart.render(values, name="sl", namespace="sightline", is_install=True)
    return next(text for path, text in manifests.items() if path.endswith("NOTES.txt"))


def pods(docs):
    """Each Deployment's pod spec, by component."""
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
        for d in docs
        if d["kind"] == "Deployment"
    }


def reachable_secrets(pod):
    """Every (secret, key) the pod spec can read: secret and projected volumes, env and
    envFrom, in every container. A key of "*" means the whole secret."""
    reach = set()

    def from_volume_source(source):
        name = source.get("secretName") or source.get("name")  # a secret or a projected volume
        if "items" in source:
            reach.update((name, item["key"]) for item in source["items"])
        else:
            reach.add((name, "*"))

    for volume in pod.get("volumes", []):
        if "secret" in volume:
            from_volume_source(volume["secret"])
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                from_volume_source(source["secret"])
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                reach.add((ref["name"], ref["key"]))
        for env_from in container.get("envFrom", []):
            if "secretRef" in env_from:
                reach.add((env_from["secretRef"]["name"], "*"))
    return reach


# Stand-ins for the keys of existing secrets the operator made (the chart renders no contents).
STAND_INS = {"ingest-password": "p", "query-password": "p", "ingest.creds": "creds", "query.creds": "creds",
             "tokens": "an-operator-token-0001"}


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


def mount_secrets(docs, pod, root):
    """Lay out under root the secret files the pod mounts under /etc/sightline/secrets, as
    Kubernetes would: the rendered secrets' contents, or stand-ins for existing ones."""
    made = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in pod["containers"][0]["volumeMounts"]:
        prefix = "/etc/sightline/secrets/"
        if not mount["mountPath"].startswith(prefix):
            continue
        source = volumes[mount["name"]]["secret"]
        contents = made.get(source["secretName"])
        if "items" in source:
            keys = [(i["key"], i["path"]) for i in source["items"]]
        elif contents is not None:
            keys = [(k, k) for k in contents]
        else:
            keys = [(k, k) for k in STAND_INS]
        directory = root / mount["mountPath"][len(prefix):]
        directory.mkdir(parents=True, exist_ok=True)
        for key, path in keys:
            if contents is not None:
                if key not in contents:
                    continue  # Kubernetes would refuse to start the pod: the config check fails.
                value = contents[key]
            else:
                value = STAND_INS.get(key, f"an-operator-token-for-{key}")
            (directory / path).write_text(value + "\n")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_configs_pass_the_binaries_check(name):
    """Each config, with the secret files exactly as its own pod mounts them (a path the
    config names but the pod does not mount fails the check)."""
    docs = render(VALUE_SETS[name])
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    for component, pod in pods(docs).items():
        key, binary_name = f"{component}.toml", f"{component}-service"
        with tempfile.TemporaryDirectory() as secrets:
            mount_secrets(docs, pod, pathlib.Path(secrets))
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
    query_creds = annotations({**VALUE_SETS["everything on"], "nats": {
        **VALUE_SETS["everything on"]["nats"], "queryCredentials": "-----BEGIN NATS USER JWT----- new"}})
    for name, before in base.items():
        assert password[name]["checksum/secret"] != before["checksum/secret"], name
        assert password[name]["checksum/config"] == before["checksum/config"], name
        assert retention[name]["checksum/config"] != before["checksum/config"], name
        assert retention[name]["checksum/secret"] == before["checksum/secret"], name
        assert query_creds[name]["checksum/secret"] != before["checksum/secret"], name
        assert query_creds[name]["checksum/config"] == before["checksum/config"], name

    # A client's new token (the config only names its file) rolls the query pods.
    clients = VALUE_SETS["named clients, replay with its own NATS user"]
    before = annotations(clients)
    grafana, *others = clients["query"]["clients"]
    rotated = [{**grafana, "token": "grafana-token-0002"}, *others]
    after = annotations({**clients, "query": {**clients["query"], "clients": rotated}})
    query = "sl-sightline-query"
    assert after[query]["checksum/secret"] != before[query]["checksum/secret"]
    assert after[query]["checksum/config"] == before[query]["checksum/config"]


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
        ({"query": {"clients": [{"name": "grafana", "scopes": ["write"]}]}}, "/query/clients/0/scopes/0"),
        ({"query": {"clients": [{"name": "Grafana.Prod", "scopes": ["read"]}]}}, "/query/clients/0/name"),
        ({"query": {"clients": [{"name": "grafana", "scopes": []}]}}, "/query/clients/0/scopes"),
        ({"query": {"clients": [{"name": "grafana", "scopes": ["read"], "token": "short"}]}}, "/query/clients/0/token"),
        ({"query": {"snapshots": {"thumbnailQuality": 0}}}, "/query/snapshots/thumbnailQuality"),
        ({"query": {"snapshots": {"thumbnailQuality": 101}}}, "/query/snapshots/thumbnailQuality"),
        ({"query": {"snapshots": {"thumbnailCacheBytes": -1}}}, "/query/snapshots/thumbnailCacheBytes"),
        ({"query": {"snapshots": {"enabled": "yes"}}}, "/query/snapshots/enabled"),
        ({"query": {"snapshots": {"thumbnailQualty": 80}}}, "thumbnailQualty"),
        ({"ingest": {"snapshots": {"maxBytes": 1023}}}, "/ingest/snapshots/maxBytes"),
        ({"ingest": {"snapshots": {"maxBytes": 8388609}}}, "/ingest/snapshots/maxBytes"),
        ({"ingest": {"snapshots": {"ownerWaitSecs": 0}}}, "/ingest/snapshots/ownerWaitSecs"),
        ({"ingest": {"snapshots": {"ownerWaitSecs": 2592001}}}, "/ingest/snapshots/ownerWaitSecs"),
        ({"nats": {"queryCredentials": 7}}, "/nats/queryCredentials"),
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


# Who holds which NATS credentials: the sets above plus snapshots and replay on and off
# around each source. The query service uses NATS for snapshots (on by default) and replay.
BOTH_CREDS = {"credentials": "ingest-creds", "queryCredentials": "query-creds"}
DEPRECATED_CREDS = {"credentials": "ingest-creds", "replayCredentials": "replay-creds"}
EXISTING_NATS = {"existingSecret": "nats-creds"}
REPLAY_ON = {**MINIMAL["query"], "replay": {"enabled": True}}
SNAPSHOTS_OFF = {**MINIMAL["query"], "snapshots": {"enabled": False}}
REPLAY_ONLY = {**REPLAY_ON, "snapshots": {"enabled": False}}
SECRET_CASES = {
    **VALUE_SETS,
    "both credentials, snapshots on, replay off": {**MINIMAL, "nats": BOTH_CREDS},
    "both credentials, snapshots and replay on": {**MINIMAL, "nats": BOTH_CREDS, "query": REPLAY_ON},
    "both credentials, replay only": {**MINIMAL, "nats": BOTH_CREDS, "query": REPLAY_ONLY},
    "both credentials, snapshots and replay off": {**MINIMAL, "nats": BOTH_CREDS, "query": SNAPSHOTS_OFF},
    "deprecated replayCredentials, snapshots on": {**MINIMAL, "nats": DEPRECATED_CREDS},
    "deprecated replayCredentials, snapshots and replay off": {
        **MINIMAL, "nats": DEPRECATED_CREDS, "query": SNAPSHOTS_OFF},
    "both query credential names, replay on": {
        **MINIMAL, "nats": {**BOTH_CREDS, "replayCredentials": "replay-creds"}, "query": REPLAY_ON},
    "existing NATS secret, snapshots and replay on": {**MINIMAL, "nats": EXISTING_NATS, "query": REPLAY_ON},
    "existing NATS secret, snapshots on, replay off": {**MINIMAL, "nats": EXISTING_NATS},
    "existing NATS secret, snapshots and replay off": {**MINIMAL, "nats": EXISTING_NATS, "query": SNAPSHOTS_OFF},
    "NATS without authentication, snapshots and replay on": {**MINIMAL, "query": REPLAY_ON},
}


def query_uses_nats(values):
    query = values["query"]
    return query.get("snapshots", {}).get("enabled", True) or query.get("replay", {}).get("enabled", False)


@pytest.mark.parametrize("name", SECRET_CASES)
def test_each_workload_reaches_only_its_own_nats_credentials(name):
    """The query pod spec has no volume, mount or env that reaches the ingest user's NATS
    credentials or ClickHouse password, and no NATS secret at all with snapshots and replay
    off; the ingest pods cannot reach the query user's credentials nor the API clients' tokens."""
    values = SECRET_CASES[name]
    docs = render(values)
    nats = values.get("nats", {})
    nats_secret = nats.get("existingSecret") or "sl-sightline-nats"
    clickhouse_secret = values["clickhouse"].get("existingSecret") or "sl-sightline-clickhouse"
    query_creds = nats.get("queryCredentials") or nats.get("replayCredentials") or nats.get("existingSecret")
    api_secrets = {"sl-sightline-query-clients", "sl-sightline-query-tokens",
                   values["query"].get("existingClientSecret"), values["query"].get("existingTokenSecret")}
    query_toml = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"]
    for component, pod in pods(docs).items():
        reach = reachable_secrets(pod)
        for secret, key in reach:
            # Never a whole secret, never the other workload's key.
            if secret == nats_secret:
                assert key == f"{component}.creds", (component, secret, key)
            if secret == clickhouse_secret:
                assert key == f"{component}-password", (component, secret, key)
        for container in pod["containers"]:
            assert not container.get("env") and not container.get("envFrom"), "secrets reach the pods as files only"
        if component == "ingest":
            assert not {s for s, _ in reach} & api_secrets, reach
            continue
        nats_reach = {key for secret, key in reach if secret == nats_secret}
        mounts = pod["containers"][0]["volumeMounts"]
        nats_mounts = [m for m in mounts if m["mountPath"].startswith("/etc/sightline/secrets/nats")]
        if query_uses_nats(values) and query_creds:
            assert nats_reach == {"query.creds"}, reach
            assert nats_mounts == [{"name": "nats", "mountPath": "/etc/sightline/secrets/nats", "readOnly": True}]
            assert 'credentials_file = "/etc/sightline/secrets/nats/query.creds"' in query_toml
        else:
            assert not nats_reach, reach
            assert not nats_mounts, mounts
            assert not [v for v in pod["volumes"] if v["name"] == "nats"], pod["volumes"]
            assert "credentials_file" not in query_toml


def test_query_nats_credentials_follow_snapshots_and_replay():
    """Snapshots alone (replay off) mount query.creds; with both off the query pods get
    nothing NATS-related but the URL, and their config says so."""
    def query_side(values):
        docs = render(values)
        toml = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"])
        return toml, pods(docs)["query"]

    toml, pod = query_side({**MINIMAL, "nats": BOTH_CREDS})
    assert toml["snapshots"]["enabled"] is True and toml["replay"]["enabled"] is False
    assert toml["nats"]["credentials_file"] == "/etc/sightline/secrets/nats/query.creds"
    volume = next(v for v in pod["volumes"] if v["name"] == "nats")
    assert volume["secret"] == {"secretName": "sl-sightline-nats", "items": [{"key": "query.creds", "path": "query.creds"}]}

    toml, pod = query_side({**MINIMAL, "nats": BOTH_CREDS, "query": SNAPSHOTS_OFF})
    assert toml["snapshots"]["enabled"] is False and toml["replay"]["enabled"] is False
    assert "credentials_file" not in toml["nats"]
    assert not [v for v in pod["volumes"] if v["name"] == "nats" or "nats" in str(v.get("secret", {}))]
    assert not [m for c in pod["containers"] for m in c["volumeMounts"] if "nats" in m["mountPath"]]
    note = notes({**MINIMAL, "nats": BOTH_CREDS, "query": SNAPSHOTS_OFF})
    assert "Snapshots are served" not in note, note

    note = notes({**MINIMAL, "nats": BOTH_CREDS})
    assert "SIGHTLINE_SNAPSHOTS" in note and "query.creds" in note, note
    assert "query.snapshots.enabled=false" in note, note


@pytest.mark.parametrize(
    "query, names, off",
    [
        (MINIMAL["query"], "query.snapshots.enabled needs", "query.snapshots.enabled=false to keep"),
        (REPLAY_ON, "query.snapshots.enabled and query.replay.enabled need",
         "query.snapshots.enabled=false and query.replay.enabled=false to keep"),
        (REPLAY_ONLY, "query.replay.enabled needs", "query.replay.enabled=false to keep"),
    ],
)
def test_query_nats_without_its_own_credentials_is_refused(query, names, off):
    """Snapshots and replay need the query service's own NATS user once NATS uses
    authentication: the query pods never get the ingest user's credentials."""
    with pytest.raises(Exception) as refused:
        render({**MINIMAL, "query": query, "nats": {"credentials": "ingest-creds"}})
    message = str(refused.value)
    assert f"{names} nats.queryCredentials: the query service's own NATS credentials" in message, message
    assert f"or set {off} the query pods off NATS" in message, message
    assert "SIGHTLINE_SNAPSHOTS" in message and "chart 0.3.0" in message, message
    # Its own credentials, the deprecated name, or an existing secret (keys ingest.creds and
    # query.creds) do instead.
    for nats in (BOTH_CREDS, DEPRECATED_CREDS, EXISTING_NATS):
        assert render({**MINIMAL, "query": query, "nats": nats})
    # NATS without authentication: nothing is needed, and nothing is mounted.
    docs = render({**MINIMAL, "query": query})
    assert "credentials_file" not in next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"]
    assert not [v for v in pods(docs)["query"]["volumes"] if v["name"] == "nats"]
    # No query service: the ingest credentials alone are fine.
    assert render({**MINIMAL, "query": {**query, "enabled": False}, "nats": {"credentials": "ingest-creds"}})


def test_snapshots_and_replay_off_need_no_query_nats_credentials():
    docs = render({**MINIMAL, "query": SNAPSHOTS_OFF, "nats": {"credentials": "ingest-creds"}})
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert 'credentials_file = "/etc/sightline/secrets/nats/ingest.creds"' in data["ingest.toml"]
    assert "credentials_file" not in data["query.toml"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "sl-sightline-nats")
    assert secret["stringData"] == {"ingest.creds": "ingest-creds"}


def test_each_config_names_its_own_nats_key():
    docs = render(SECRET_CASES["both credentials, snapshots and replay on"])
    data = next(d for d in docs if d["kind"] == "ConfigMap")["data"]
    assert 'credentials_file = "/etc/sightline/secrets/nats/ingest.creds"' in data["ingest.toml"]
    assert 'credentials_file = "/etc/sightline/secrets/nats/query.creds"' in data["query.toml"]
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "sl-sightline-nats")
    assert secret["stringData"] == {"ingest.creds": "ingest-creds", "query.creds": "query-creds"}
    assert "nats.replayCredentials" not in notes(SECRET_CASES["both credentials, snapshots and replay on"])


def test_the_deprecated_replay_credentials_still_work():
    """nats.replayCredentials is the old name of nats.queryCredentials: the same key, the
    same mount, a warning; queryCredentials wins when both are set."""
    def nats_secret(values):
        docs = render(values)
        secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "sl-sightline-nats")
        query = pods(docs)["query"]
        return secret["stringData"], {k for s, k in reachable_secrets(query) if s == "sl-sightline-nats"}

    assert nats_secret({**MINIMAL, "nats": DEPRECATED_CREDS}) == (
        {"ingest.creds": "ingest-creds", "query.creds": "replay-creds"}, {"query.creds"})
    assert nats_secret({**MINIMAL, "nats": DEPRECATED_CREDS, "query": REPLAY_ONLY}) == (
        {"ingest.creds": "ingest-creds", "query.creds": "replay-creds"}, {"query.creds"})
    # Alone, without the ingest user's.
    assert nats_secret({**MINIMAL, "nats": {"replayCredentials": "replay-creds"}}) == (
        {"query.creds": "replay-creds"}, {"query.creds"})
    both = {**MINIMAL, "nats": {**BOTH_CREDS, "replayCredentials": "replay-creds"}}
    assert nats_secret(both) == ({"ingest.creds": "ingest-creds", "query.creds": "query-creds"}, {"query.creds"})
    warning = "WARNING: nats.replayCredentials is deprecated: rename it to nats.queryCredentials"
    assert warning in notes({**MINIMAL, "nats": DEPRECATED_CREDS})
    assert "nats.queryCredentials is set as well and is the one used" in notes(both)
    assert "nats.replayCredentials" not in notes({**MINIMAL, "nats": BOTH_CREDS})


def test_snapshot_settings_render_into_both_configs():
    def configs(values):
        data = next(d for d in render(values) if d["kind"] == "ConfigMap")["data"]
        return tomllib.loads(data["ingest.toml"]), tomllib.loads(data["query.toml"])

    ingest, query = configs(MINIMAL)
    assert ingest["snapshots"] == {"max_bytes": 1000000, "owner_wait_secs": 3600}
    assert query["snapshots"] == {"enabled": True, "thumbnail_cache_bytes": 33554432, "thumbnail_quality": 80}
    ingest, query = configs({
        **MINIMAL,
        "ingest": {"snapshots": {"maxBytes": 2097152, "ownerWaitSecs": 600}},
        "query": {**MINIMAL["query"], "snapshots": {
            "enabled": False, "thumbnailCacheBytes": 8589934592, "thumbnailQuality": 55}},
    })
    assert ingest["snapshots"] == {"max_bytes": 2097152, "owner_wait_secs": 600}
    assert query["snapshots"] == {"enabled": False, "thumbnail_cache_bytes": 8589934592, "thumbnail_quality": 55}


def test_named_clients_render_into_config_secret_and_mount():
    values = VALUE_SETS["named clients, replay with its own NATS user"]
    docs = render(values)
    query = tomllib.loads(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"])
    assert query["auth"] == {"clients": [
        {"name": "grafana", "scopes": ["read"], "token_file": "/etc/sightline/secrets/clients/grafana"},
        {"name": "ops_team-2", "scopes": ["read", "export", "replay"],
         "token_file": "/etc/sightline/secrets/clients/ops_team-2"},
    ]}, "no inline token, no deprecated token_file"
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "sl-sightline-query-clients")
    assert secret["stringData"] == {"grafana": "grafana-token-0001", "ops_team-2": "ops-token-00000002"}
    assert not [d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "sl-sightline-query-tokens"]
    pod = pods(docs)["query"]
    mounts = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "clients"]
    assert mounts == [{"name": "clients", "mountPath": "/etc/sightline/secrets/clients", "readOnly": True}]
    volume = next(v for v in pod["volumes"] if v["name"] == "clients")["secret"]
    assert volume["secretName"] == "sl-sightline-query-clients"
    assert [i["key"] for i in volume["items"]] == ["grafana", "ops_team-2"]
    assert not [s for s, _ in reachable_secrets(pods(docs)["ingest"]) if s == "sl-sightline-query-clients"]
    note = notes(values)
    assert "deprecated" not in note and "clients with the replay scope" in note, note

    # An existing secret: no secret made, its keys named after the clients, nothing else of it mounted.
    docs = render(VALUE_SETS["named clients from existing secrets"])
    assert not [d for d in docs if d["kind"] == "Secret"]
    volume = next(v for v in pods(docs)["query"]["volumes"] if v["name"] == "clients")["secret"]
    assert volume == {"secretName": "api-clients", "items": [
        {"key": "grafana", "path": "grafana"}, {"key": "exporter", "path": "exporter"}]}

    # The deprecated tokens still work beside clients, with a warning.
    mixed = {**values, "query": {**values["query"], "tokens": ["a-token-of-20-chars!"]}}
    query = tomllib.loads(next(d for d in render(mixed) if d["kind"] == "ConfigMap")["data"]["query.toml"])
    assert query["auth"]["token_file"] == "/etc/sightline/secrets/tokens/tokens"
    assert len(query["auth"]["clients"]) == 2
    assert "WARNING: query.tokens and query.existingTokenSecret are deprecated" in notes(mixed)
    assert "deprecated" in notes({**MINIMAL, "query": {"existingTokenSecret": "api-tokens"}})


def test_clients_alone_satisfy_the_no_anonymous_rule():
    client = {"name": "grafana", "scopes": ["read"]}
    docs = render({"clickhouse": PASSWORDS, "query": {"clients": [{**client, "token": "grafana-token-0001"}]}})
    assert "[[auth.clients]]" in next(d for d in docs if d["kind"] == "ConfigMap")["data"]["query.toml"]
    assert render({"clickhouse": PASSWORDS, "query": {"clients": [client], "existingClientSecret": "api-clients"}})
    # An existing client secret with no clients declared authenticates nobody.
    with pytest.raises(Exception) as refused:
        render({"clickhouse": PASSWORDS, "query": {"existingClientSecret": "api-clients"}})
    assert "query.allowAnonymous=true" in str(refused.value), refused.value


@pytest.mark.parametrize(
    "query, message",
    [
        ({"clients": [{"name": "grafana", "scopes": ["read"]}]}, "query.clients[0] (grafana): no token"),
        ({"clients": [{"name": "grafana", "scopes": ["read"], "token": "grafana-token-0001"}],
          "existingClientSecret": "api-clients"}, "give one or the other"),
        ({"clients": [{"name": "grafana", "scopes": ["read"], "token": "grafana-token-0001"},
                      {"name": "grafana", "scopes": ["export"], "token": "grafana-token-0002"}]},
         'the name "grafana" is given twice'),
        ({"clients": [{"name": "token-1", "scopes": ["read"], "token": "grafana-token-0001"}],
          "tokens": ["a-token-of-20-chars!"]}, 'the name "token-1" is the one a deprecated'),
    ],
)
def test_client_mistakes_are_refused_naming_the_client(query, message):
    with pytest.raises(Exception) as refused:
        render({"clickhouse": PASSWORDS, "query": query})
    assert message in str(refused.value), refused.value
