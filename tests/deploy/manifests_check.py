#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Static checks of everything under deploy/ and the Dockerfile, with the tools this machine has:

* every Kubernetes manifest validates against the Kubernetes API schemas (kubernetes-validate, which
  carries them; strict: unknown fields fail), and passes yamllint;
* the manifests agree with each other and with the server: selectors match the pod labels, service
  target ports name container ports, probes are native gRPC probes on the gRPC port, the startup probe
  allows for a model load, liveness outlasts the drain, the pod's grace period covers preStop plus the
  server's drain, GPU requests equal limits, the HPA scales the Deployment on a metric the server
  exports, the ConfigMap's config passes `attribution-server --check_config`;
* the batch Jobs (deploy/k8s/batch) validate the same way and agree with the serving manifests and the
  tool: an Indexed Job whose shard flags match its completions, that reaches the headless Service with
  round robin, names only flags attribution-batch has, and shares a ReadWriteMany volume with the
  merge Job, which reads what the shards write; the image carries attribution-batch;
* the compose file, Prometheus and Grafana provisioning agree (scrape target = server metrics port,
  datasource uid = the dashboard's); the Dockerfile passes hadolint and its HEALTHCHECK / ports match.

Usage: manifests_check.py SERVER_BINARY BATCH_BINARY
"""
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
K8S_VERSION = "1.33.0"
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


def venv_tool(name):
    return os.path.join(os.path.dirname(sys.executable), name)


def exported_metrics():
    with open(os.path.join(ROOT, "server/metrics.cc")) as f:
        return set(re.findall(r'"(attribution_[a-z_]+)"', f.read()))


def seconds(probe):
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def validate_manifests(files, also_lint=()):
    """kubernetes-validate (strict) over `files`, yamllint over them and `also_lint`; their documents by
    (kind, name)."""
    lint = subprocess.run([venv_tool("yamllint"), "-f", "parsable", "-d",
                           "{extends: default, rules: {line-length: {max: 120}, document-start: disable}}", *files,
                           *also_lint],
                          capture_output=True, text=True)
    check(lint.returncode == 0, f"yamllint:\n{lint.stdout}")
    docs = {}
    for path in files:
        if path.endswith("kustomization.yaml"):
            continue
        validate = subprocess.run([venv_tool("kubernetes-validate"), "--strict", "--kubernetes-version", K8S_VERSION, path],
                                  capture_output=True, text=True)
        check(validate.returncode == 0, f"kubernetes-validate {os.path.basename(path)}:\n{validate.stdout}{validate.stderr}")
        for doc in yaml.safe_load_all(open(path)):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    return docs


def check_restricted_pod(name, pod):
    """Pod Security Standards "restricted" (what a namespace that enforces it admits), and a group that
    owns the volumes a non-root pod writes: the batch Jobs lacked both, so they were refused beside the
    server in such a namespace, and user 10001 could not create its results on a fresh volume."""
    pod_context = pod.get("securityContext", {})
    check(pod_context.get("runAsNonRoot") is True, f"{name} may run as root")
    check(pod_context.get("fsGroup") == pod_context.get("runAsUser"), f"{name}: fsGroup is not its user's group")
    for container in pod["containers"]:
        context = container.get("securityContext", {})
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        where = f"{name} container {container['name']}"
        check(seccomp in ("RuntimeDefault", "Localhost"), f"{where} has no seccomp profile")
        check(context.get("allowPrivilegeEscalation") is False, f"{where} allows privilege escalation")
        check(context.get("capabilities", {}).get("drop") == ["ALL"], f"{where} keeps Linux capabilities")


def check_kubernetes(server_binary):
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/*.yaml")))
    docs = validate_manifests(files, [os.path.join(ROOT, "deploy/compose"), os.path.join(ROOT, "deploy/grafana")])
    kustomization = yaml.safe_load(open(os.path.join(ROOT, "deploy/k8s/kustomization.yaml")))
    listed = set(kustomization["resources"])
    for path in files:
        name = os.path.basename(path)
        if name not in ("kustomization.yaml", "prometheus-adapter-rules.yaml"):
            check(name in listed, f"kustomization.yaml does not list {name}")

    deployment = docs[("Deployment", "attribution-server")]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    check(deployment["spec"]["selector"]["matchLabels"].items() <= labels.items(), "Deployment selector misses pod labels")
    config_doc = docs[("ConfigMap", "attribution-server-config")]
    server_config = json.loads(config_doc["data"]["server.json"])
    tls = bool(server_config.get("tls", {}).get("cert_file"))
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container[probe_name]
        if tls:
            # The kubelet's native gRPC probes speak plaintext only: against a TLS port every probe fails,
            # so the pods never became ready and liveness restarted them.
            command = probe.get("exec", {}).get("command", [])
            # --tls too: the CLI refuses certificate flags on a plaintext connection (exit 1, every probe).
            check(command[:2] == ["attribution-cli", "health"] and "--tls" in command
                  and any(a.startswith("--ca=") for a in command),
                  f"{probe_name}: the config serves TLS, which gRPC probes cannot speak; use exec: "
                  "attribution-cli health --server=127.0.0.1:PORT --tls --ca=CA_FILE --tls_server_name=NAME")
        else:
            check("grpc" in probe and probe["grpc"]["port"] == ports["grpc"],
                  f"{probe_name} is not a gRPC probe on the gRPC port")
    check(seconds(container["startupProbe"]) >= 300, "startup probe allows less than 5 minutes for model load")
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    check(grace >= pre_stop + server_config["grace_period_seconds"],
          f"terminationGracePeriodSeconds {grace} < preStop {pre_stop} + drain {server_config['grace_period_seconds']}")
    check(seconds(container["livenessProbe"]) > grace, "liveness would restart a draining pod")
    resources = container["resources"]
    check(resources["requests"].get("nvidia.com/gpu") == resources["limits"].get("nvidia.com/gpu") == 1,
          "GPU request and limit must both be 1")
    check_restricted_pod("the server Deployment", pod["spec"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    check(container["args"] == [f"--config={mounts['config']}/server.json"], "server args do not read the mounted config")
    for model in server_config["models"]:
        check(model["path"].startswith(mounts["models"] + "/") or model["path"].startswith("/opt/attribution/models/"),
              f"model {model['name']} is neither on the models volume nor embedded in the image")
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(config_doc["data"]["server.json"])
        f.flush()
        # The model and TLS files live in the cluster's volumes, not here: only the values are checked.
        result = subprocess.run([server_binary, f"--config={f.name}", "--check_config", "--check_config_files=false"],
                                capture_output=True, text=True)
        check(result.returncode == 0, f"ConfigMap server.json: {result.stderr.strip()}")
        check(str(ports["grpc"]) in server_config["listen"] and str(ports["metrics"]) in server_config["metrics_listen"],
              "container ports differ from the config's listen addresses")

    headless = docs[("Service", "attribution-server")]
    check(headless["spec"].get("clusterIP") == "None", "the gRPC service is not headless")
    metrics_service = docs[("Service", "attribution-server-metrics")]
    for service in (headless, metrics_service):
        check(service["spec"]["selector"].items() <= labels.items(), f"service {service['metadata']['name']} selects no pod")
        for port in service["spec"]["ports"]:
            check(port["targetPort"] in ports, f"service {service['metadata']['name']} targets unknown port {port['targetPort']}")
    pdb = docs[("PodDisruptionBudget", "attribution-server")]
    check(pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "PDB selects no pod")
    hpa = docs[("HorizontalPodAutoscaler", "attribution-server")]
    check(hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"], "HPA scales another Deployment")
    for metric in hpa["spec"]["metrics"]:
        name = metric["pods"]["metric"]["name"]
        check(name in exported_metrics(), f"HPA metric {name} is not exported by the server")
    check(hpa["spec"]["minReplicas"] > pdb["spec"]["maxUnavailable"], "PDB could take every replica at minReplicas")
    adapter = yaml.safe_load(yaml.safe_load(open(os.path.join(ROOT, "deploy/k8s/prometheus-adapter-rules.yaml")))["data"]["config.yaml"])
    check(any(r["name"]["as"] == hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] for r in adapter["rules"]),
          "the adapter rules do not serve the HPA's metric")


def check_batch_jobs(batch_binary):
    files = sorted(glob.glob(os.path.join(ROOT, "deploy/k8s/batch/*.yaml")))
    docs = validate_manifests(files)
    listed = set(yaml.safe_load(open(os.path.join(ROOT, "deploy/k8s/batch/kustomization.yaml")))["resources"])
    check(listed == {"data-pvc.yaml", "indexed-job.yaml"}, "batch kustomization must list the volume and the indexed job")
    job, merge = docs[("Job", "attribution-batch")], docs[("Job", "attribution-batch-merge")]
    pvc = docs[("PersistentVolumeClaim", "attribution-batch-data")]
    check(pvc["spec"]["accessModes"] == ["ReadWriteMany"], "the batch data volume must be ReadWriteMany")
    spec = job["spec"]
    check(spec.get("completionMode") == "Indexed" and "backoffLimitPerIndex" in spec,
          "the batch Job must be Indexed with a per-index backoff limit")
    check(spec["parallelism"] <= spec["completions"], "parallelism above completions")
    script = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    merge_script = merge["spec"]["template"]["spec"]["containers"][0]["args"][0]
    flags = dict(re.findall(r"--([a-z_]+)=(\S+)", script))
    check(flags.get("shard_count") == str(spec["completions"]), "--shard_count differs from completions")
    check(flags.get("shard_index") == "${JOB_COMPLETION_INDEX}", "--shard_index is not the completion index")
    check(flags.get("load_balancing") == "round_robin", "the batch pods do not spread calls over the replicas")
    headless = yaml.safe_load(open(os.path.join(ROOT, "deploy/k8s/service-headless.yaml")))
    check(flags.get("server") == f"dns:///{headless['metadata']['name']}:{headless['spec']['ports'][0]['port']}",
          "--server is not the headless Service's gRPC port")
    known = set(re.findall(r"--([a-z_]+)", subprocess.run([batch_binary, "--helpfull"], capture_output=True,
                                                         text=True).stdout))
    for name in re.findall(r"--([a-z_]+)", script + merge_script):
        check(name in known, f"attribution-batch has no flag --{name}")
    merge_flags = dict(re.findall(r"--([a-z_]+)=(\S+)", merge_script))
    check(merge_flags.get("input") == flags.get("input"), "the merge reads another input than the shards")
    shard_dir = os.path.dirname(flags.get("output", ""))
    check(f"{shard_dir}/shard-*.jsonl" in merge_script, "the merge does not read the shards' results")
    for doc in (job, merge):
        pod = doc["spec"]["template"]["spec"]
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        check(claims == [pvc["metadata"]["name"]], f"{doc['metadata']['name']} does not mount the batch data volume")
        check_restricted_pod(doc["metadata"]["name"], pod)
    build_script = open(os.path.join(ROOT, "deploy/docker/build-image.sh")).read()
    check("client/attribution-batch" in build_script, "the image does not carry attribution-batch")


class ComposeLoader(yaml.SafeLoader):
    """Reads Compose's merge tags: !reset drops a key of the file below, !override replaces its value."""


RESET = object()
ComposeLoader.add_constructor("!reset", lambda loader, node: RESET)
ComposeLoader.add_constructor("!override", lambda loader, node: ("override", loader.construct_sequence(node)))


def mounted_config(service):
    """The host file a compose service mounts as /config/server.json, relative to deploy/compose."""
    for volume in service["volumes"]:
        source, target = volume.split(":")[:2]
        if target == "/config/server.json":
            return os.path.join(ROOT, "deploy/compose", source)
    return None


def check_cpu_compose(gpu_server):
    """The CPU override (no GPU on the host) must drop the GPU reservation, which Docker cannot satisfy
    without the NVIDIA runtime, and mount a config whose models run on the CPU: the compose file alone with
    VARIANT=cpu kept both and could not start."""
    override = yaml.load(open(os.path.join(ROOT, "deploy/compose/docker-compose.cpu.yml")), Loader=ComposeLoader)
    server = dict(gpu_server)
    for key, value in override["services"]["server"].items():
        if value is RESET:
            server.pop(key, None)
        elif isinstance(value, tuple):
            server[key] = value[1]
        elif isinstance(value, dict) and isinstance(server.get(key), dict):
            server[key] = {**server[key], **value}
        else:
            server[key] = value
    check("deploy" not in server, "the CPU compose override keeps the GPU reservation")
    check(server["build"]["args"].get("VARIANT") == "cpu" and server["image"].endswith(":cpu"),
          "the CPU compose override does not build the CPU image")
    for name, service in (("GPU", gpu_server), ("CPU", server)):
        path = mounted_config(service)
        check(path is not None and os.path.exists(path), f"the {name} compose server mounts no config")
        if path is None or not os.path.exists(path):
            continue
        devices = {m.get("device", "cpu").split(":")[0] for m in json.load(open(path))["models"]}
        check(devices == ({"cuda"} if name == "GPU" else {"cpu"}), f"the {name} compose config puts models on {devices}")
    readme = open(os.path.join(ROOT, "README.md")).read()
    check("-f deploy/compose/docker-compose.cpu.yml" in readme, "README does not show the CPU compose command")


def check_compose_and_grafana():
    compose = yaml.safe_load(open(os.path.join(ROOT, "deploy/compose/docker-compose.yml")))
    services = compose["services"]
    check({"server", "prometheus", "grafana"} <= services.keys(), "compose lacks server, prometheus or grafana")
    prometheus = yaml.safe_load(open(os.path.join(ROOT, "deploy/compose/prometheus.yml")))
    targets = [t for c in prometheus["scrape_configs"] for s in c["static_configs"] for t in s["targets"]]
    server_config = json.load(open(os.path.join(ROOT, "deploy/compose/server.json")))
    metrics_port = server_config["metrics_listen"].rsplit(":", 1)[1]
    check(f"server:{metrics_port}" in targets, "Prometheus does not scrape the server's metrics port")
    check(any(p.startswith(f"{metrics_port}:") for p in services["server"]["ports"]), "compose does not publish the metrics port")
    check_cpu_compose(services["server"])
    datasource = yaml.safe_load(open(os.path.join(ROOT, "deploy/grafana/provisioning/datasources/prometheus.yml")))
    uid = datasource["datasources"][0]["uid"]
    dashboard = json.load(open(os.path.join(ROOT, "deploy/grafana/dashboards/attribution.json")))
    for panel in dashboard["panels"]:
        check(panel["datasource"]["uid"] == uid, f"panel {panel['title']} uses another datasource")
        for target in panel["targets"]:
            names = set(re.findall(r"attribution_[a-z_]+", target["expr"]))
            base = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
            check(base <= exported_metrics(), f"panel {panel['title']} queries unknown metrics {base - exported_metrics()}")
            # Refusals are answered in microseconds: quantiles over every code fall when the server is overloaded.
            if "histogram_quantile" in target["expr"] and "attribution_rpc_seconds" in target["expr"]:
                check('code="OK"' in target["expr"], f"panel {panel['title']} mixes refused calls into latency quantiles")
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("request rate", "latency", "queue depth", "batch fill", "padding waste", "throughput", "gpu memory"):
        check(needed in titles, f"the dashboard has no {needed} panel")


def check_dockerfile():
    dockerfile = os.path.join(ROOT, "Dockerfile")
    # DL3006 (tag every FROM image) misreads FROM build-${VARIANT}, which names a stage of this file.
    lint = subprocess.run([venv_tool("hadolint"), "--ignore", "DL3006", dockerfile],
                          capture_output=True, text=True)
    check(lint.returncode == 0, f"hadolint:\n{lint.stdout}{lint.stderr}")
    text = open(dockerfile).read()
    check("USER 10001" in text, "the runtime stage does not switch to the non-root user")
    check(re.search(r"HEALTHCHECK .*attribution-cli\", \"health\"", text, re.S) is not None, "HEALTHCHECK is not the gRPC health check")
    check("EXPOSE 50051 9464" in text, "the image does not expose the gRPC and metrics ports")
    ignored = open(os.path.join(ROOT, ".dockerignore")).read().split()
    for entry in (".git", ".venv", "build*"):
        check(entry in ignored, f".dockerignore lacks {entry}")


def main():
    server_binary, batch_binary = sys.argv[1], sys.argv[2]
    check_kubernetes(server_binary)
    check_batch_jobs(batch_binary)
    check_compose_and_grafana()
    check_dockerfile()
    for failure in failures:
        print("FAIL:", failure)
    print(f"manifests_check: {len(failures)} problems")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
