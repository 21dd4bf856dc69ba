"""deploy/k8s: every overlay rendered without a cluster, checked against the Kubernetes schemas
(kubernetes-validate ships them offline) and against the processes it runs: flags and
``VS_SERVER_*`` / ``VS_SHARD_*`` variables parsed by the real argument parsers, gRPC health
service names from the servers' own constants, labels that Services and PodDisruptionBudgets
select, the shards that the servers register.

No kustomize binary is needed: ``render`` implements the subset of kustomize these manifests use
(resources, namespace, images, strategic-merge patches including ``$patch: delete``) and refuses
anything else, so a manifest that needs more fails here instead of being checked half-rendered.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]

import server.main as server_main
import shard.main as shard_main

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
OVERLAYS = sorted(p.parent for p in (ROOT / "overlays").glob("*/kustomization.yaml"))
# grpc probes are GA from 1.27; also the newest release whose schemas the package ships
K8S_VERSIONS = ("1.27", kubernetes_validate.latest_version())
Doc = dict[str, Any]

# --- a minimal, strict kustomize -------------------------------------------------------------

KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "namespace", "patches", "images"}
CLUSTER_SCOPED = {"Namespace"}
# strategic-merge keys of the lists these manifests patch (others are replaced, as kustomize does)
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
}


def _load_yaml(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _ident(doc: Doc) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


def _merge(base: Any, patch: Any, key: str = "") -> Any:
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if k.startswith("$"):
                raise AssertionError(f"unsupported patch directive {k}")
            out[k] = _merge(base[k], v, k) if k in base else copy.deepcopy(v)
        return out
    if isinstance(base, list) and isinstance(patch, list) and key in MERGE_KEYS:
        mk = MERGE_KEYS[key]
        out_list = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out_list):
                if existing[mk] == item[mk]:
                    out_list[i] = _merge(existing, item, key)
                    break
            else:
                out_list.append(copy.deepcopy(item))
        return out_list
    return copy.deepcopy(patch)


def _set_image(doc: Doc, images: list[Doc]) -> None:
    pod = _pod_spec(doc)
    if pod is None:
        return
    for c in pod.get("containers", []) + pod.get("initContainers", []):
        name = c["image"].split("@")[0].rsplit(":", 1)[0] if ":" in c["image"].split("/")[-1] else c["image"]
        for img in images:
            if set(img) - {"name", "newName", "newTag"}:
                raise AssertionError(f"unsupported images entry {img}")
            if img["name"] == name:
                c["image"] = f"{img.get('newName', name)}:{img['newTag']}" if "newTag" in img else img["newName"]


def render(directory: Path) -> list[Doc]:
    """The documents ``kustomize build DIRECTORY`` prints, for the features listed above."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - KUSTOMIZATION_KEYS
    if unknown:
        raise AssertionError(f"{directory}: kustomization fields this loader does not implement: {sorted(unknown)}")
    docs: list[Doc] = []
    for res in kust.get("resources", []):
        path = directory / res
        docs.extend(render(path) if path.is_dir() else _load_yaml(path))
    seen = [_ident(d) for d in docs]
    assert len(seen) == len(set(seen)), f"{directory}: duplicate resources {seen}"
    for entry in kust.get("patches", []):
        if set(entry) != {"path"}:
            raise AssertionError(f"{directory}: only strategic-merge patches by path are implemented: {entry}")
        for patch in _load_yaml(directory / entry["path"]):
            matches = [i for i, d in enumerate(docs) if _ident(d) == _ident(patch)]
            assert len(matches) == 1, f"{directory}/{entry['path']}: patch target {_ident(patch)} not found"
            if patch.get("$patch") == "delete":
                del docs[matches[0]]
            else:
                assert patch["apiVersion"] == docs[matches[0]]["apiVersion"]
                docs[matches[0]] = _merge(docs[matches[0]], patch)
    if "namespace" in kust:
        for d in docs:
            if d["kind"] not in CLUSTER_SCOPED:
                d["metadata"]["namespace"] = kust["namespace"]
    for d in docs:
        _set_image(d, kust.get("images", []))
    return docs


# --- helpers ------------------------------------------------------------------------------------


def _pod_spec(doc: Doc) -> Doc | None:
    if doc["kind"] in ("Deployment", "StatefulSet"):
        spec: Doc = doc["spec"]["template"]["spec"]
        return spec
    return None


def _workloads(docs: list[Doc]) -> Iterator[Doc]:
    return (d for d in docs if _pod_spec(d) is not None)


def _one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if _ident(d) == (kind, name)]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _container(docs: list[Doc], kind: str, name: str) -> Doc:
    pod = _pod_spec(_one(docs, kind, name))
    assert pod is not None
    (c,) = pod["containers"]
    return c


def _env(docs: list[Doc], container: Doc) -> dict[str, str]:
    """The container's environment as far as it is literal: ConfigMaps of envFrom, then env values
    (values from Secrets as the Secret's stringData)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        env.update(_one(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = e["value"]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = _one(docs, "Secret", ref["name"])["stringData"][ref["key"]]
    return env


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _parse(module: str, args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """``python -m MODULE ARGS`` under ENV through the module's own parser (defaults read the
    environment when the parser is built)."""
    with monkeypatch.context() as m:
        for k, v in env.items():
            m.setenv(k, v)
        if module == "server":
            p = argparse.ArgumentParser(exit_on_error=False)
            server_main.add_arguments(p)
            return p.parse_args(args)
        assert module == "shard", module
        return shard_main.parse_args(args)


@pytest.fixture(params=OVERLAYS, ids=lambda p: p.name)
def rendered(request: pytest.FixtureRequest) -> tuple[Path, list[Doc]]:
    return request.param, render(request.param)


# --- tests --------------------------------------------------------------------------------------


def test_overlays_exist() -> None:
    assert {p.name for p in OVERLAYS} >= {"cpu", "gpu", "external-postgres"}


def test_schema_valid(rendered: tuple[Path, list[Doc]]) -> None:
    _, docs = rendered
    problems = []
    for doc in docs:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except Exception as exc:  # its own ValidationError or jsonschema's, by version
                path = "/".join(str(p) for p in getattr(exc, "path", ()))
                message = getattr(exc, "message", str(exc)[:500])
                problems.append(f"{_ident(doc)} against Kubernetes {version}: {message} at {path}")
    assert not problems, "\n".join(problems)


def test_containers_have_resources_probes_and_run_as_non_root(rendered: tuple[Path, list[Doc]]) -> None:
    _, docs = rendered
    for w in _workloads(docs):
        pod = _pod_spec(w)
        assert pod is not None
        psc = pod["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, _ident(w)
        for c in pod["containers"]:
            where = (*_ident(w), c["name"])
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), where
            assert "readinessProbe" in c and "livenessProbe" in c, where
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
            ports = {p["containerPort"] for p in c["ports"]} | {p["name"] for p in c["ports"]}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                action = c.get(probe, {})
                port = (action.get("grpc") or action.get("httpGet") or {}).get("port")
                assert port is None or port in ports, (where, probe, port)


def test_grpc_probes_name_the_services_health_reports(
    rendered: tuple[Path, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    expected = {
        "server": {"", server_main.ADMIN, server_main.SEARCH},
        "shard": {"", shard_main.SERVICE_NAME},
    }
    for kind, name in (("Deployment", "server"), ("StatefulSet", "shard")):
        c = _container(docs, kind, name)
        args = _parse(name, c["args"][1:], _env(docs, c), monkeypatch)
        host, port = args.listen.rsplit(":", 1)
        assert host == "0.0.0.0", f"{name} listens on {args.listen}: unreachable from other pods"
        assert [p["containerPort"] for p in c["ports"]] == [int(port)]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            grpc = c[probe]["grpc"]
            assert grpc["port"] == int(port), (name, probe)
            assert grpc.get("service", "") in expected[name], (name, probe, grpc)
    # readiness of a shard: its service; of a server: the process (not SearchService: one shard
    # down would take every server out of the Service)
    assert _container(docs, "StatefulSet", "shard")["readinessProbe"]["grpc"]["service"] == shard_main.SERVICE_NAME
    assert _container(docs, "Deployment", "server")["readinessProbe"]["grpc"]["service"] == server_main.ADMIN


def test_env_and_flags_are_read_by_the_parsers(
    rendered: tuple[Path, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every VS_* variable set in the manifests changes its flag in the real parser (a renamed
    flag or variable fails here), and the container args parse."""
    _, docs = rendered
    for kind, name, prefix in (("Deployment", "server", "VS_SERVER_"), ("StatefulSet", "shard", "VS_SHARD_")):
        c = _container(docs, kind, name)
        assert c["image"].startswith("vectorsearch:"), c["image"]
        assert c["args"][0] == name and (Path(__file__).parents[2] / name / "__main__.py").exists()
        env = {k: v for k, v in _env(docs, c).items() if k.startswith("VS_")}
        assert env and all(k.startswith(prefix) for k in env), env
        defaults = _parse(name, [], {}, monkeypatch)
        configured = _parse(name, c["args"][1:], env, monkeypatch)
        for var, value in env.items():
            dest = var.removeprefix(prefix).lower()
            assert hasattr(defaults, dest), f"{var}: {name} has no flag --{dest.replace('_', '-')}"
            assert getattr(configured, dest) == type(getattr(defaults, dest))(value), var


def test_shards_stateful_and_registered_by_stable_name(
    rendered: tuple[Path, list[Doc]], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, docs = rendered
    sts = _one(docs, "StatefulSet", "shard")
    ns = sts["metadata"]["namespace"]
    headless = _one(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    c = _container(docs, "StatefulSet", "shard")
    shard_args = _parse("shard", c["args"][1:], _env(docs, c), monkeypatch)
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    data_mount = Path(mounts[claim["metadata"]["name"]])
    # the data dir lies inside the volume, not at its root (lost+found is no collection)
    assert data_mount in Path(shard_args.data_dir).parents, (shard_args.data_dir, data_mount)
    port = int(shard_args.listen.rsplit(":", 1)[1])
    assert [p["port"] for p in headless["spec"]["ports"]] == [port]

    srv = _container(docs, "Deployment", "server")
    server_args = _parse("server", srv["args"][1:], _env(docs, srv), monkeypatch)
    want = [
        f"shard-{i}=shard-{i}.{headless['metadata']['name']}.{ns}.svc:{port}" for i in range(sts["spec"]["replicas"])
    ]
    assert server_args.register_shard == want
    assert sts["metadata"]["name"] == "shard"  # pod names shard-N, as registered
    assert _one(docs, "Deployment", "server")["spec"]["replicas"] == 2


def test_services_and_budgets_select_pods(rendered: tuple[Path, list[Doc]]) -> None:
    _, docs = rendered
    pods = {_ident(w): w["spec"]["template"]["metadata"]["labels"] for w in _workloads(docs)}
    for w in _workloads(docs):
        assert _selects(w["spec"]["selector"]["matchLabels"], pods[_ident(w)]), _ident(w)
    for svc in (d for d in docs if d["kind"] == "Service"):
        matched = [k for k, labels in pods.items() if _selects(svc["spec"]["selector"], labels)]
        assert len(matched) == 1, (svc["metadata"]["name"], matched)
        pod = _pod_spec(_one(docs, *matched[0]))
        assert pod is not None
        named = {p["name"] for c in pod["containers"] for p in c["ports"]}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in named, (svc["metadata"]["name"], p)
    budgets = {}
    for pdb in (d for d in docs if d["kind"] == "PodDisruptionBudget"):
        matched = [k for k, labels in pods.items() if _selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(matched) == 1, (pdb["metadata"]["name"], matched)
        budgets[matched[0]] = pdb
    assert ("StatefulSet", "shard") in budgets and ("Deployment", "server") in budgets


def test_triton_url_and_gpu(rendered: tuple[Path, list[Doc]], monkeypatch: pytest.MonkeyPatch) -> None:
    overlay, docs = rendered
    srv = _container(docs, "Deployment", "server")
    url = _parse("server", srv["args"][1:], _env(docs, srv), monkeypatch).triton_url
    host, port = url.rsplit(":", 1)
    svc = _one(docs, "Service", host)
    assert _selects(
        svc["spec"]["selector"], _one(docs, "Deployment", "triton")["spec"]["template"]["metadata"]["labels"]
    )
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]}["grpc"] == int(port)
    triton = _container(docs, "Deployment", "triton")
    gpu = triton["resources"]["limits"].get("nvidia.com/gpu")
    assert triton["image"].startswith("vectorsearch-triton:")
    if overlay.name == "gpu":
        assert gpu == "1" and triton["resources"]["requests"]["nvidia.com/gpu"] == "1"
        assert triton["image"].endswith(":dev-gpu")
    else:
        assert gpu is None


def test_database_url(rendered: tuple[Path, list[Doc]], monkeypatch: pytest.MonkeyPatch) -> None:
    overlay, docs = rendered
    srv = _container(docs, "Deployment", "server")
    url = _parse("server", srv["args"][1:], _env(docs, srv), monkeypatch).database_url
    assert url.startswith("postgresql+psycopg://")
    in_cluster = [d for d in docs if d["metadata"]["name"] == "postgres"]
    if overlay.name == "external-postgres":
        assert in_cluster == [] and "@postgres:" not in url
    else:
        assert {d["kind"] for d in in_cluster} == {"StatefulSet", "Service"} and "@postgres:5432/" in url
        pg = _container(docs, "StatefulSet", "postgres")
        env = _env(docs, pg)
        assert f"{env['POSTGRES_USER']}:{env['POSTGRES_PASSWORD']}@" in url and url.endswith(f"/{env['POSTGRES_DB']}")


def test_loader_refuses_what_it_does_not_implement(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources: []\nconfigMapGenerator: []\n")
    with pytest.raises(AssertionError, match="configMapGenerator"):
        render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: [{path: p.yaml, target: {kind: Service}}]\n")
    with pytest.raises(AssertionError, match="only strategic-merge patches by path"):
        render(tmp_path)
    (tmp_path / "p.yaml").write_text("apiVersion: v1\nkind: Service\nmetadata: {name: nowhere}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches: [{path: p.yaml}]\n")
    with pytest.raises(AssertionError, match="not found"):
        render(tmp_path)


def test_loader_merges_and_deletes(tmp_path: Path) -> None:
    base = tmp_path / "base"
    base.mkdir()
    (base / "kustomization.yaml").write_text("resources: [d.yaml]\nimages: [{name: app, newTag: v1}]\n")
    (base / "d.yaml").write_text(
        yaml.safe_dump_all(
            [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "a"},
                    "spec": {
                        "template": {
                            "spec": {
                                "containers": [
                                    {"name": "x", "image": "app", "env": [{"name": "A", "value": "1"}]},
                                    {"name": "y", "image": "other"},
                                ]
                            }
                        }
                    },
                },
                {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}},
            ]
        )
    )
    over = tmp_path / "over"
    over.mkdir()
    (over / "kustomization.yaml").write_text("namespace: n\nresources: [../base]\npatches: [{path: p.yaml}]\n")
    (over / "p.yaml").write_text(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: a}\nspec: {template: {spec: {containers: "
        "[{name: x, env: [{name: B, value: '2'}]}]}}}\n---\n$patch: delete\napiVersion: v1\nkind: Service\n"
        "metadata: {name: s}\n"
    )
    (doc,) = render(over)
    x, y = doc["spec"]["template"]["spec"]["containers"]
    assert x["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}] and x["image"] == "app:v1"
    assert y == {"name": "y", "image": "other"} and doc["metadata"]["namespace"] == "n"
