"""Generate the PoolBenchmark CRD from the spec and status models (one source of truth).

Pydantic emits JSON Schema 2020-12; Kubernetes wants a structural OpenAPI v3 schema: no $ref,
``nullable`` instead of ``anyOf [X, null]``, boolean ``exclusiveMinimum``, no
``additionalProperties: false`` next to ``properties`` (unknown fields are rejected by the API
server's strict field validation instead). ``manifests/crd.yaml`` and the chart's copy are this
module's output; a test proves they match.
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from .results import BenchmarkStatus
from .spec import API_GROUP, API_VERSION, KIND, MAX_NAME_LENGTH, PLURAL, PoolBenchmarkSpec

DROP_KEYS = {"title", "$defs", "examples"}

SPEC_DESCRIPTION = (
    "What to measure: the server's limits, the workload, the replica steps. Immutable once created:"
    " delete the PoolBenchmark and create it again to measure another."
)

#: A benchmark measures the spec it was created with, once: an edit could never be applied (a finished
#: benchmark is not measured again, a running one keeps what it started with). The API server refuses
#: it, saying so, rather than take an edit no status would ever observe (kstatus would read the object
#: as in progress forever: metadata.generation ahead of status.observedGeneration). Metadata edits
#: (labels, annotations, the operator's finalizer) do not touch spec and stay allowed.
SPEC_IMMUTABLE = {
    "rule": "self == oldSelf",
    "message": "spec is immutable: a PoolBenchmark measures the spec it was created with; delete it and create"
    " it again (or create one under another name) to measure a different spec",
}

PRINTER_COLUMNS = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Step", "type": "string", "jsonPath": ".status.progress"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
    {"name": "Peak", "type": "integer", "jsonPath": ".status.peakConnections"},
    {"name": "MaxConn", "type": "integer", "jsonPath": ".status.maxConnections"},
    {"name": "Failures", "type": "integer", "jsonPath": ".status.failures"},
    {"name": "MaxSafe", "type": "integer", "jsonPath": ".status.verdict.maxSafeReplicas"},
    {"name": "Verdict", "type": "string", "jsonPath": ".status.shortVerdict", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def _marked(node: dict[str, Any], keep_defaults: bool) -> dict[str, Any] | None:
    """A node whose Kubernetes marker replaces its schema, reduced to what the API server accepts; None
    for any other node."""
    if node.get("x-kubernetes-preserve-unknown-fields"):  # a union of shapes (list or object): the operator validates
        return {k: v for k, v in node.items() if k in ("description", "x-kubernetes-preserve-unknown-fields")}
    if node.get("x-kubernetes-int-or-string"):  # structural: no types, the marker says integer or string
        return {
            k: v
            for k, v in node.items()
            if k in ("description", "x-kubernetes-int-or-string") or (k == "default" and keep_defaults)
        }
    return None


def _single_option(node: dict[str, Any], defs: dict[str, Any], keep_defaults: bool) -> dict[str, Any] | None:
    """``anyOf [X, null]`` (or ``anyOf [X]``) as X with ``nullable``; None when more than one shape is left."""
    options = [o for o in node["anyOf"] if o.get("type") != "null"]
    if len(options) != 1:
        return None
    merged = {**_resolve(options[0], defs, keep_defaults)}
    for key, value in node.items():
        if key != "anyOf":
            merged[key] = value
    if len(options) < len(node["anyOf"]):
        merged["nullable"] = True
    return merged


def _structural(key: str, value: Any, defs: dict[str, Any], keep_defaults: bool) -> dict[str, Any]:
    """One keyword of a schema node as the structural schema spells it: none, one or two keywords."""
    if key in DROP_KEYS:
        return {}
    if key == "default":
        keep = keep_defaults and value is not None and not isinstance(value, (dict, list))
        return {key: value} if keep else {}
    if key == "additionalProperties" and value is False:
        return {}
    if key == "exclusiveMinimum" and not isinstance(value, bool):
        return {"minimum": value, "exclusiveMinimum": True}
    if key == "const":
        return {"enum": [value]}
    if key == "properties":
        return {key: {k: _resolve(v, defs, keep_defaults) for k, v in value.items()}}
    return {key: _resolve(value, defs, keep_defaults)}


def _resolve(node: Any, defs: dict[str, Any], keep_defaults: bool) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs, keep_defaults) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        target.update(extra)
        return _resolve(target, defs, keep_defaults)
    marked = _marked(node, keep_defaults)
    if marked is not None:
        return marked
    if "anyOf" in node:
        merged = _single_option(node, defs, keep_defaults)
        if merged is not None:
            return _resolve(merged, defs, keep_defaults)
    out: dict[str, Any] = {}
    for key, value in node.items():
        out.update(_structural(key, value, defs, keep_defaults))
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    return out


def structural(node: dict[str, Any], defs: dict[str, Any], *, keep_defaults: bool) -> dict[str, Any]:
    """One node of a model's JSON schema (its ``$ref`` resolved from ``defs``) as a structural schema."""
    schema: dict[str, Any] = _resolve(node, defs, keep_defaults)
    return schema


def openapi_schema(model: type[BaseModel], *, keep_defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return structural(raw, raw.get("$defs", {}), keep_defaults=keep_defaults)


def status_schema() -> dict[str, Any]:
    return openapi_schema(BenchmarkStatus, keep_defaults=False)


def build_crd() -> dict[str, Any]:
    spec_schema = openapi_schema(PoolBenchmarkSpec, keep_defaults=True)
    spec_schema["description"] = SPEC_DESCRIPTION
    spec_schema["x-kubernetes-validations"] = [SPEC_IMMUTABLE]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
        "spec": {
            "group": API_GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": KIND.lower(),
                "shortNames": ["pbench"],
                "categories": ["poolbench"],
            },
            "versions": [
                {
                    "name": API_VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": PRINTER_COLUMNS,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A connection-pool benchmark against one PostgreSQL.",
                            "required": ["spec"],
                            "x-kubernetes-validations": [
                                {
                                    "rule": f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
                                    "message": f"metadata.name must be at most {MAX_NAME_LENGTH} characters"
                                    " (child object names and labels append suffixes)",
                                }
                            ],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema(),
                            },
                        }
                    },
                }
            ],
        },
    }


def source_file(model: type[BaseModel]) -> str:
    """The file a model is defined in, relative to the repository (named in the generated header)."""
    return model.__module__.replace(".", "/") + ".py"


def crd_yaml() -> str:
    sources = f"{source_file(PoolBenchmarkSpec)} and {source_file(BenchmarkStatus)}"
    header = f"# Generated by `poolbench crd` (make crd) from {sources}. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=120)
