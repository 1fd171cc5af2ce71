#!/usr/bin/env python3
"""Offline checks of deploy/ that a schema cannot make: what Trident's deployment needs.

    python3 deploy/check_manifests.py [deploy/k8s]

Needs PyYAML only. Exits 1 with one line per problem. Checked:
- every manifest parses, has apiVersion, kind, metadata.name; the kustomization lists them all;
- Deployment: a selector matching the pod labels; a container with an image, a named
  containerPort, cpu and memory requests and limits (limits >= requests), a readinessProbe
  on GET /health, a livenessProbe and a startupProbe; a non-root securityContext; libtorch
  threads (--threads) not above the CPU limit; terminationGracePeriodSeconds longer than the
  drain (preStop sleep + TRIDENT_REQUEST_TIMEOUT); a liveness that cannot fail within the
  grace period (a draining pod must not be restarted);
- Service: selects the Deployment's pods and targets its port;
- HorizontalPodAutoscaler: targets the Deployment, min <= max, at least one metric;
- PodDisruptionBudget: selects the Deployment's pods and leaves at least one up;
- Dockerfile: multi-stage, a non-root USER, libtorch from scripts/setup-libtorch.sh (the
  pinned torch wheel).
"""

from __future__ import annotations

import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
problems: list[str] = []


def need(cond, msg):
    if not cond:
        problems.append(msg)
    return bool(cond)


def cpu(value) -> float:
    s = str(value)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def mem(value) -> float:
    s = str(value)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9}
    for u, f in units.items():
        if s.endswith(u):
            return float(s[: -len(u)]) * f
    return float(s)


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in (selector or {}).items()) and bool(selector)


def main() -> int:
    k8s = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "k8s")
    docs = {}
    files = sorted(f for f in os.listdir(k8s) if f.endswith((".yaml", ".yml")))
    for f in files:
        with open(os.path.join(k8s, f), encoding="utf-8") as fh:
            for doc in yaml.safe_load_all(fh):
                if doc is None:
                    continue
                kind = doc.get("kind")
                need(doc.get("apiVersion"), f"{f}: no apiVersion")
                need(kind, f"{f}: no kind")
                if kind != "Kustomization":
                    need((doc.get("metadata") or {}).get("name"), f"{f}: no metadata.name")
                docs.setdefault(kind, []).append((f, doc))

    kust = docs.get("Kustomization", [])
    if need(kust, "no kustomization.yaml"):
        listed = set(kust[0][1].get("resources") or [])
        for f in files:
            if f != kust[0][0]:
                need(f in listed, f"kustomization.yaml does not list {f}")

    deps = docs.get("Deployment", [])
    if not need(len(deps) == 1, "expected one Deployment"):
        return report()
    f, dep = deps[0]
    name = dep["metadata"]["name"]
    spec = dep.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    need(selects((spec.get("selector") or {}).get("matchLabels"), labels),
         f"{f}: spec.selector.matchLabels does not match the pod labels")
    need((spec.get("replicas") or 0) >= 2, f"{f}: fewer than 2 replicas (no redundancy)")
    sc = pod.get("securityContext") or {}
    need(sc.get("runAsNonRoot") is True, f"{f}: pod securityContext.runAsNonRoot is not true")
    need((sc.get("runAsUser") or 0) != 0, f"{f}: runAsUser is root")
    containers = pod.get("containers") or []
    need(containers, f"{f}: no containers")
    port_names = set()
    grace = pod.get("terminationGracePeriodSeconds", 30)
    for c in containers:
        cn = c.get("name", "?")
        need(c.get("image"), f"{f}: container {cn}: no image")
        ports = c.get("ports") or []
        need(ports, f"{f}: container {cn}: no ports")
        port_names |= {p.get("name") for p in ports} | {p.get("containerPort") for p in ports}
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        for r in ("cpu", "memory"):
            need(r in req, f"{f}: container {cn}: no {r} request")
            need(r in lim, f"{f}: container {cn}: no {r} limit")
        if "cpu" in req and "cpu" in lim:
            need(cpu(lim["cpu"]) >= cpu(req["cpu"]), f"{f}: container {cn}: cpu limit below the request")
        if "memory" in req and "memory" in lim:
            need(mem(lim["memory"]) >= mem(req["memory"]), f"{f}: container {cn}: memory limit below the request")
        args = [str(a) for a in (c.get("args") or [])]
        if "--threads" in args and "cpu" in lim:
            threads = int(args[args.index("--threads") + 1])
            need(threads <= max(1, cpu(lim["cpu"])),
                 f"{f}: container {cn}: --threads {threads} above the cpu limit {lim['cpu']}")
        rp = ((c.get("readinessProbe") or {}).get("httpGet") or {})
        need(rp.get("path") == "/health", f"{f}: container {cn}: readinessProbe is not GET /health")
        need(c.get("livenessProbe"), f"{f}: container {cn}: no livenessProbe")
        need(c.get("startupProbe"), f"{f}: container {cn}: no startupProbe (model loading)")
        lp = c.get("livenessProbe") or {}
        if lp:
            window = lp.get("periodSeconds", 10) * lp.get("failureThreshold", 3)
            need(window > grace, f"{f}: container {cn}: the livenessProbe can fail within the grace "
                                 f"period ({window} s <= {grace} s) and restart a draining pod")
        csc = c.get("securityContext") or {}
        need(csc.get("allowPrivilegeEscalation") is False, f"{f}: container {cn}: allowPrivilegeEscalation not false")
        env = {e.get("name"): e.get("value") for e in c.get("env") or []}
        need(env.get("TRIDENT_MODELS"), f"{f}: container {cn}: no TRIDENT_MODELS")
        timeout = int(env.get("TRIDENT_REQUEST_TIMEOUT", 300))
        pre = ((c.get("lifecycle") or {}).get("preStop") or {})
        sleep = 0
        cmd = (pre.get("exec") or {}).get("command") or []
        if len(cmd) == 2 and cmd[0] == "sleep":
            sleep = int(cmd[1])
        sleep = (pre.get("sleep") or {}).get("seconds", sleep)
        need(grace > sleep + timeout,
             f"{f}: terminationGracePeriodSeconds {grace} is not longer than the drain "
             f"(preStop {sleep} s + TRIDENT_REQUEST_TIMEOUT {timeout} s)")

    for f2, svc in docs.get("Service", []):
        s = svc.get("spec") or {}
        need(selects(s.get("selector"), labels), f"{f2}: the selector does not match the Deployment's pods")
        for p in s.get("ports") or []:
            need(p.get("targetPort") in port_names, f"{f2}: targetPort {p.get('targetPort')} is not a container port")
    need(docs.get("Service"), "no Service")

    for f2, hpa in docs.get("HorizontalPodAutoscaler", []):
        s = hpa.get("spec") or {}
        ref = s.get("scaleTargetRef") or {}
        need(ref.get("kind") == "Deployment" and ref.get("name") == name, f"{f2}: does not target Deployment/{name}")
        need(1 <= s.get("minReplicas", 1) <= s.get("maxReplicas", 0), f"{f2}: minReplicas/maxReplicas out of order")
        need(s.get("metrics"), f"{f2}: no metrics")
    need(docs.get("HorizontalPodAutoscaler"), "no HorizontalPodAutoscaler")

    for f2, pdb in docs.get("PodDisruptionBudget", []):
        s = pdb.get("spec") or {}
        need(selects((s.get("selector") or {}).get("matchLabels"), labels), f"{f2}: does not select the Deployment's pods")
        if "minAvailable" in s:
            need(int(s["minAvailable"]) < (spec.get("replicas") or 1), f"{f2}: minAvailable blocks every eviction")
        else:
            need(int(s.get("maxUnavailable", 0)) >= 1, f"{f2}: maxUnavailable 0 blocks every eviction")
    need(docs.get("PodDisruptionBudget"), "no PodDisruptionBudget")

    dockerfile = os.path.join(HERE, "Dockerfile")
    if need(os.path.exists(dockerfile), "no deploy/Dockerfile"):
        text = open(dockerfile, encoding="utf-8").read()
        froms = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", text, re.M | re.I)
        need(len(froms) >= 2, "Dockerfile: not multi-stage")
        users = re.findall(r"^USER\s+(\S+)", text, re.M)
        need(users and users[-1].split(":")[0] not in ("root", "0"), "Dockerfile: the last USER is root (or none)")
        need("scripts/setup-libtorch.sh" in text, "Dockerfile: libtorch not from scripts/setup-libtorch.sh")
        pinned = re.search(r"TORCH_VERSION=(\S+)", open(os.path.join(ROOT, "scripts/setup-libtorch.sh")).read())
        need(pinned, "scripts/setup-libtorch.sh pins no TORCH_VERSION")
        need(os.path.exists(dockerfile + ".dockerignore"), "no deploy/Dockerfile.dockerignore (the build context would hold target/)")
    return report()


def report() -> int:
    for p in problems:
        print(f"check_manifests: {p}", file=sys.stderr)
    if problems:
        return 1
    print("check_manifests: Deployment, Service, HPA, PDB, kustomization and Dockerfile: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
