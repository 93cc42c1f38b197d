"""The ``pool`` click group: info (table and JSON) and export-nnunet."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from pool_helpers import CASES, VIEWS, build_pool
from vstk.errors import PoolError
from vstk.pool.cli import pool_group


@pytest.fixture(scope="module")
def pool_path(tmp_path_factory):
    return build_pool(tmp_path_factory.mktemp("pool") / "pool.h5", shape=(6, 32, 32))


def test_info_prints_a_table_of_views_and_cases(pool_path):
    result = CliRunner().invoke(pool_group, ["info", str(pool_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == str(pool_path)
    assert "schema vstk-pool v1" in lines[1] and "0.41 x 0.41 x 1.5 mm" in lines[1]
    assert lines[2].startswith(f"{len(VIEWS)} view(s), {len(CASES)} label(s), 2 target(s), pseudo-label rounds: 1")
    matrix_header = next(i for i, line in enumerate(lines) if line.startswith("case "))
    assert lines[matrix_header].split() == ["case", *VIEWS, "label"]
    for row, case in zip(lines[matrix_header + 2:], sorted(CASES)):
        assert row.split() == [case, "6x32x32", "6x32x32", "yes"]
    rows = [line for line in lines if line.startswith(("cyclegan ", "qsattn "))]
    assert len(rows) == len(VIEWS) * len(CASES) + len(VIEWS)  # entry rows + per-view summary rows
    assert sum("vstk-qsattn 0.1.0" in row for row in rows) == len(CASES)


def test_info_json_is_the_pool_info(pool_path):
    result = CliRunner().invoke(pool_group, ["info", str(pool_path), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["schema_version"] == 1 and len(info["entries"]) == len(VIEWS) * len(CASES)


def test_export_command_writes_the_dataset(tmp_path, pool_path):
    result = CliRunner().invoke(pool_group, ["export-nnunet", str(pool_path), "--out", str(tmp_path),
                                             "--dataset-id", "12", "--views", "qsattn"])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(CASES)} training cases to {tmp_path / 'Dataset012_vstkPool'}" in result.output


def test_errors_reach_the_top_level_cli_as_vstk_errors(tmp_path):
    result = CliRunner().invoke(pool_group, ["info", str(tmp_path / "missing.h5")])
    assert isinstance(result.exception, PoolError)
    assert "pool file not found" in str(result.exception)

    # Mounted under vstk's group class, which prints VstkErrors as one line with exit status 2.
    from vstk.cli import VstkGroup

    mounted = VstkGroup("vstk", commands={"pool": pool_group})
    result = CliRunner().invoke(mounted, ["pool", "info", str(tmp_path / "missing.h5")])
    assert result.exit_code == 2
    assert "error: " in result.output and "pool file not found" in result.output
