"""The spec reference page is generated from the spec model, and the docs site builds in strict mode.

Like the CRD (tests/test_crd.py), ``docs/reference/spec.md`` is committed and must equal what
``poolbench reference`` writes now; every field of the CRD's spec schema must have its row, so a field
added to the model without ``make docs-reference`` fails here.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import markdown
import pytest
from pydantic import BaseModel, Field

from poolbench.cli import main
from poolbench.core.crd import build_crd
from poolbench.core.reference import _cell as reference_cell
from poolbench.core.reference import model_sections, spec_reference
from tests.conftest import ROOT

REFERENCE = ROOT / "docs/reference/spec.md"


def crd_spec_schema() -> dict[str, Any]:
    spec: dict[str, Any] = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return spec


def crd_spec_paths() -> Iterator[str]:
    """Every field path of the CRD's spec schema (``spec.variants[].pooler.poolMode``), walked on its own:
    an object's fields, a list's items (``[]``), a map's values (``.*``)."""

    def walk(node: dict[str, Any], path: str) -> Iterator[str]:
        for name, field in node.get("properties", {}).items():
            yield f"{path}.{name}"
            yield from walk(field, f"{path}.{name}")
            yield from walk(field.get("items", {}), f"{path}.{name}[]")
            values = field.get("additionalProperties")
            if isinstance(values, dict):
                yield from walk(values, f"{path}.{name}.*")

    yield from walk(crd_spec_schema(), "spec")


def kept_as_given() -> set[str]:
    """The spec's fields the API server keeps as given (several shapes): the model checks their insides."""
    return {f"spec.{name}" for name, field in crd_spec_schema()["properties"].items() if "type" not in field}


def test_committed_reference_matches_the_model() -> None:
    assert REFERENCE.read_text() == spec_reference(), "run: make docs-reference"


def test_every_crd_field_has_a_row() -> None:
    page = spec_reference()
    rows = {line.split("|")[1].strip().strip("`") for line in page.splitlines() if line.startswith("| `spec.")}
    paths = list(crd_spec_paths())
    assert len(paths) > 80  # the walk found the schema, not an empty object
    missing = [path for path in paths if path not in rows]
    assert missing == []
    # A row the CRD has no field for is inside a field it keeps as given (spec.steps' search form).
    beyond = {row for row in rows - set(paths) if not any(row.startswith(f"{kept}.") for kept in kept_as_given())}
    assert beyond == set()
    assert {"spec.steps.search.min", "spec.steps.search.max"} <= rows


def test_rows_carry_type_default_bounds_and_description() -> None:
    rows = {line.split(" | ")[0].strip("| `"): line for line in spec_reference().splitlines() if line.startswith("| `")}
    assert rows["spec.postgres.maxConnections"] == (
        "| `spec.postgres.maxConnections` | integer | `100` | 2 to 10000 | PostgreSQL max_connections. |"
    )
    assert "`QueuePool`, `NullPool`, `StaticPool`, `SingletonThreadPool`" in rows["spec.workload.engine.poolClass"]
    assert "| integer or string | `25%` |" in rows["spec.rollout.maxSurge"]
    assert "| list of integer or [object {search}](#specsteps) |" in rows["spec.steps"]
    assert "| required | 2 to 500 |" in rows["spec.steps.search.max"]
    assert "| string or list of string |" in rows["spec.workload.transaction"]
    assert "| required |" in rows["spec.database.host"]
    assert "> 0, ≤ 1 |" in rows["spec.safety.stopAtUsedFraction"]
    assert "[list of object](#specvariants)" in rows["spec.variants"]
    assert "`<name>-rw`" in rows["spec.database.host"]


def test_a_cell_keeps_its_columns_and_shows_code_as_written() -> None:
    cell = reference_cell("a | b <i>\n `x|y <z>`")
    assert cell == "a \\| b &lt;i> `x|y <z>`"
    rendered = markdown.markdown(f"| h | i |\n|---|---|\n| {cell} | next |", extensions=["tables"])
    assert "<td>a | b &lt;i&gt; <code>x|y &lt;z&gt;</code></td>" in rendered
    assert "<td>next</td>" in rendered


class Leaf(BaseModel):
    """A leaf object."""

    size: int = Field(3, ge=1, le=9, description="How big.")


class Tree(BaseModel):
    by_name: dict[str, Leaf] = Field(default_factory=dict, alias="byName", description="Leaves by name.")
    leaves: list[Leaf] = Field(default_factory=list, max_length=4)
    shape: list[int] | Leaf | None = Field(
        None, description="A list or a leaf.", json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )


def test_maps_lists_and_kept_shapes_of_objects_get_their_sections() -> None:
    page = "\n".join(model_sections(Tree, "tree", "The root."))
    assert "| `tree.byName` | [map of string to object](#treebyname) |" in page
    assert "| `tree.byName.*.size` | integer | `3` | 1 to 9 | How big. |" in page
    assert "| `tree.leaves` | [list of object](#treeleaves) |  | at most 4 items |" in page
    assert "| `tree.leaves[].size` |" in page
    assert "| `tree.shape` | list of integer or [object {size}](#treeshape) |" in page
    assert "| `tree.shape.size` |" in page
    headings = [line for line in page.splitlines() if line.startswith("## ")]
    assert headings == ["## `tree`", "## `tree.byName.*`", "## `tree.leaves[]`", "## `tree.shape`"]


def test_every_object_has_a_section_its_links_reach() -> None:
    page = spec_reference()
    headings = [line.removeprefix("## ").strip("`") for line in page.splitlines() if line.startswith("## ")]
    assert headings[0] == "spec"
    assert {
        "spec.variants[]",
        "spec.variants[].pooler",
        "spec.database.monitorSecret",
        "spec.target.load",
        "spec.steps.search",
    } <= set(headings)
    anchors = {"".join(c for c in h.lower() if c.isalnum() or c in "-_") for h in headings}
    assert len(anchors) == len(headings)  # no two sections share an id
    links = {part.split(")")[0] for part in page.split("](#")[1:]}
    assert links == anchors - {"spec"}


def test_reference_command_prints_the_page(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reference"]) == 0
    assert capsys.readouterr().out == spec_reference()


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "mkdocs",
        "build",
        "--strict",
        "--config-file",
        str(config),
        "--site-dir",
        str(site),
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_docs_site_builds_in_strict_mode(tmp_path: Path) -> None:
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site/reference/spec/index.html").is_file()
    assert "spec.workload.engine.poolSize" in (tmp_path / "site/reference/spec/index.html").read_text()
    # The site loads nothing from outside itself (the theme's highlight.js would come from a CDN).
    for page in (tmp_path / "site").rglob("*.html"):
        fetched = re.findall(r"<(?:script|link)\b[^>]*(?:src|href)=\"(https?:[^\"]*)\"", page.read_text())
        assert fetched == [], page


def test_a_broken_link_fails_the_strict_build(tmp_path: Path) -> None:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    index = tmp_path / "docs/index.md"
    index.write_text(index.read_text() + "\nSee [the missing page](no-such-page.md).\n")
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-page.md" in built.stderr
    index.write_text(index.read_text().replace("no-such-page.md", "reference/spec.md#no-such-anchor"))
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0
    assert "no-such-anchor" in built.stderr
