"""The spec reference page (``docs/reference/spec.md``), generated from the same schema as the CRD.

The page is rendered from the structural schema ``crd.openapi_schema`` makes of ``PoolBenchmarkSpec``,
so it states exactly what the API server enforces: each object gets a section, each field a row with
its path, type, default, allowed values and description. Fields whose schema keeps several shapes
(``x-kubernetes-preserve-unknown-fields``) take their shapes from the model's own JSON schema.
A test proves the committed page matches.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from .crd import SPEC_DESCRIPTION, openapi_schema, source_file, structural
from .spec import API_GROUP, API_VERSION, KIND, PoolBenchmarkSpec

JSON_TYPE_WORDS = {
    "integer": "integer",
    "number": "number",
    "string": "string",
    "boolean": "boolean",
    "object": "object",
    "array": "list",
}


def _cell(text: str) -> str:
    """Text safe inside one Markdown table cell: one line; outside code spans (every odd part between
    backticks is inside one) no column break and no raw HTML; inside, as written (MkDocs' tables keep
    a code span's pipes)."""
    parts = " ".join(text.split()).split("`")
    return "`".join(
        part if index % 2 else part.replace("|", "\\|").replace("<", "&lt;") for index, part in enumerate(parts)
    )


def _code(value: Any) -> str:
    shown = str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{shown}`"


def _anchor(path: str) -> str:
    """The id MkDocs gives the heading ``path`` (its default slugify: dots and brackets dropped)."""
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_")


def _is_object(node: dict[str, Any]) -> bool:
    return "properties" in node


def _raw_options(raw: dict[str, Any] | None, defs: dict[str, Any]) -> list[dict[str, Any]]:
    """The shapes a field of the model's own JSON schema takes (``null`` left out)."""
    if raw is None:
        return []
    node = defs[raw["$ref"].split("/")[-1]] if "$ref" in raw else raw
    options = node.get("anyOf", [node])
    resolved = [defs[o["$ref"].split("/")[-1]] if "$ref" in o else o for o in options]
    return [o for o in resolved if o.get("type") != "null"]


def _shape_word(option: dict[str, Any]) -> str:
    if option.get("type") == "array":
        return f"list of {_shape_word(option.get('items', {}))}"
    if "properties" in option:
        keys = ", ".join(option["properties"])
        return f"object {{{keys}}}"
    return JSON_TYPE_WORDS.get(str(option.get("type")), "any")


def _type(node: dict[str, Any], raw: dict[str, Any] | None, defs: dict[str, Any]) -> str:
    if node.get("x-kubernetes-int-or-string"):
        return "integer or string"
    if node.get("x-kubernetes-preserve-unknown-fields"):
        if raw is None:
            return "any"
        return " or ".join(_shape_word(o) for o in _raw_options(raw, defs))
    kind = str(node.get("type", "any"))
    if kind == "array":
        return f"list of {_type(node.get('items', {}), None, defs)}"
    if kind == "object" and "additionalProperties" in node:
        return f"map of string to {_type(node['additionalProperties'], None, defs)}"
    return JSON_TYPE_WORDS.get(kind, kind)


def _range(node: dict[str, Any]) -> list[str]:
    """A number's bounds: ``2 to 10000``, ``> 0, ≤ 4096``, ``≥ 0``."""
    low = node.get("minimum")
    high = node.get("maximum")
    if low is None and high is None:
        return []
    low_word = None if low is None else (f"> {low}" if node.get("exclusiveMinimum") else f"≥ {low}")
    if low_word is not None and high is not None:
        return [f"{low} to {high}" if low_word.startswith("≥") else f"{low_word}, ≤ {high}"]
    return [low_word if low_word is not None else f"≤ {high}"]


def _count(node: dict[str, Any], low_key: str, high_key: str, unit: str) -> list[str]:
    """A length's bounds in words: ``1 to 63 characters``, ``at least 1 character``, ``at most 50 items``."""
    low = node.get(low_key)
    high = node.get(high_key)
    if low is not None and high is not None:
        return [f"{low} to {high} {unit}s"]
    if low is not None:
        return [f"at least {low} {unit}" + ("s" if low != 1 else "")]
    if high is not None:
        return [f"at most {high} {unit}" + ("s" if high != 1 else "")]
    return []


def _allowed(node: dict[str, Any]) -> str:
    words: list[str] = []
    if "enum" in node:
        words.append(", ".join(_code(v) for v in node["enum"]))
    words += _range(node)
    words += _count(node, "minLength", "maxLength", "character")
    words += _count(node, "minItems", "maxItems", "item")
    if "pattern" in node:
        words.append(f"matches `{node['pattern']}`")
    items = node.get("items", {})
    if node.get("type") == "array" and not _is_object(items):
        inner = _allowed(items)
        if inner:
            words.append(f"each: {inner}")
    return "; ".join(words)


def _default(node: dict[str, Any], required: bool) -> str:
    if required:
        return "required"
    if "default" in node:
        return _code(node["default"])
    return ""


Nested = tuple[str, dict[str, Any], dict[str, Any]]
"""An object a field holds, for its own section: its path, its structural schema, its model schema."""


def _first_raw(raw: dict[str, Any] | None, defs: dict[str, Any]) -> dict[str, Any]:
    options = _raw_options(raw, defs) if raw is not None else []
    return options[0] if options else {}


def _held(
    path: str, field: dict[str, Any], raw: dict[str, Any] | None, defs: dict[str, Any]
) -> tuple[str, list[Nested]]:
    """A field's type cell (linking to the sections of the objects it holds) and those objects: the field
    itself (``path``), each item of a list (``path[]``), each value of a map (``path.*``), or the object
    shapes of a field the API server keeps as given (from the model's own schema)."""
    kind = _type(field, raw, defs)
    if _is_object(field):
        return f"[{kind}](#{_anchor(path)})", [(path, field, _first_raw(raw, defs))]
    items = field.get("items", {})
    if field.get("type") == "array" and _is_object(items):
        child = f"{path}[]"
        return f"[{kind}](#{_anchor(child)})", [(child, items, _first_raw(_first_raw(raw, defs).get("items"), defs))]
    values = field.get("additionalProperties")
    if isinstance(values, dict) and _is_object(values):
        child = f"{path}.*"
        raw_values = _first_raw(raw, defs).get("additionalProperties")
        return f"[{kind}](#{_anchor(child)})", [(child, values, _first_raw(raw_values, defs))]
    if field.get("x-kubernetes-preserve-unknown-fields") and raw is not None:
        words, nested = [], []
        for option in _raw_options(raw, defs):
            if "properties" in option:
                words.append(f"[{_shape_word(option)}](#{_anchor(path)})")
                nested.append((path, structural(option, defs, keep_defaults=True), option))
            else:
                words.append(_shape_word(option))
        return " or ".join(words), nested
    return kind, []


def _section(
    path: str, node: dict[str, Any], raw: dict[str, Any], defs: dict[str, Any], description: str
) -> tuple[list[str], list[Nested]]:
    """One object's section, and the objects its fields hold (path, schema, model schema) in order."""
    lines = [f"## `{path}`", ""]
    if description:
        lines += [" ".join(description.split()), ""]
    lines += ["| field | type | default | allowed | description |", "|---|---|---|---|---|"]
    nested: list[Nested] = []
    raw_properties = raw.get("properties", {})
    required = set(node.get("required", []))
    for name, field in node["properties"].items():
        field_path = f"{path}.{name}"
        kind, held = _held(field_path, field, raw_properties.get(name), defs)
        nested += held
        row = [
            f"`{field_path}`",
            kind,
            _default(field, name in required),
            _allowed(field),
            field.get("description", ""),
        ]
        lines.append("| " + " | ".join(_cell(c) for c in row) + " |")
    lines.append("")
    return lines, nested


def model_sections(model: type[BaseModel], root: str, description: str) -> list[str]:
    """One section per object of ``model``'s structural schema (as the CRD has it), ``root`` first, then
    depth first in field order."""
    schema = openapi_schema(model, keep_defaults=True)
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    lines: list[str] = []
    pending: list[Nested] = [(root, schema, raw)]
    while pending:
        path, node, raw_node = pending.pop(0)
        section, nested = _section(
            path, node, raw_node, defs, description if path == root else node.get("description", "")
        )
        lines += section
        pending = nested + pending
    return lines


def spec_reference() -> str:
    """The Markdown page of ``docs/reference/spec.md``: a header, then the spec's sections."""
    lines = [
        f"<!-- Generated by `poolbench reference` (make docs-reference) from {source_file(PoolBenchmarkSpec)}."
        " Do not edit. -->",
        "",
        "# Spec reference",
        "",
        f"Every field of a `{KIND}` (`apiVersion: {API_GROUP}/{API_VERSION}`) `spec`, one section per object."
        " Paths are the YAML keys (camelCase). The same schema is the CRD's (`manifests/crd.yaml`), so the API"
        " server enforces the types and bounds below; `poolbench validate FILE` checks a file against the same"
        " model, with the rules that span several fields.",
        "",
        "A blank default means the field may be omitted and has no value of its own (see its description).",
        "",
        *model_sections(PoolBenchmarkSpec, "spec", SPEC_DESCRIPTION),
    ]
    return "\n".join(lines).rstrip("\n") + "\n"
