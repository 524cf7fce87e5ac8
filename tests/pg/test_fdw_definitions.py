"""Definitions and values drift would change silently are refused with a clear ERROR (issue 13).

Unknown options fail at CREATE FOREIGN TABLE; bytea / numeric payload columns are refused (drift cannot
store them exactly); multi-dimensional arrays are refused at INSERT / UPDATE; a token taken from the
setting drift.token comes with a WARNING (the setting is readable by every role).
"""

from __future__ import annotations

import contextlib

import psycopg
import pytest

pytestmark = [pytest.mark.pg, pytest.mark.multicorn]


def _refused(sql, statement: str, message: str) -> psycopg.Error:
    with pytest.raises(psycopg.Error) as err:
        sql.execute(statement)
    assert message in (err.value.diag.message_primary or ""), err.value.diag.message_primary
    assert err.value.diag.message_hint
    assert sql.execute("SELECT 1").fetchone() == (1,)
    return err.value


def test_unknown_table_option_fails_at_create(sql, fdw_server) -> None:
    err = _refused(
        sql,
        f"CREATE FOREIGN TABLE pg_temp.t (id bigint, embedding real[]) SERVER {fdw_server} "
        "OPTIONS (collection 'x', colection 'y')",
        "unknown option 'colection'",
    )
    assert err.diag.sqlstate == "22023"
    assert sql.execute("SELECT to_regclass('pg_temp.t')").fetchone() == (None,)


def test_unknown_option_fails_at_alter(sql, fdw_server) -> None:
    sql.execute(
        f"CREATE FOREIGN TABLE pg_temp.t2 (id bigint, embedding real[]) SERVER {fdw_server} OPTIONS (collection 'x')"
    )
    _refused(sql, "ALTER FOREIGN TABLE pg_temp.t2 OPTIONS (ADD dimm '3')", "unknown option 'dimm'")


@pytest.mark.parametrize("type_name", ["bytea", "numeric", "numeric(10,2)", "bytea[]"])
def test_lossy_payload_types_are_refused(sql, fdw_server, type_name) -> None:
    _refused(
        sql,
        f"CREATE FOREIGN TABLE pg_temp.t3 (id bigint, embedding real[], v {type_name}) SERVER {fdw_server} "
        "OPTIONS (collection 'x')",
        "cannot hold exactly",
    )


@pytest.fixture
def table(sql, fdw_server, engine_server, unique_name):
    with engine_server.client() as client:
        client.create_collection(unique_name, 4).upsert([1], [[1, 0, 0, 0]], [{"tags": ["a"]}])
    tbl = f"d_{unique_name}"
    sql.execute(
        f"CREATE FOREIGN TABLE {tbl} (id bigint, embedding real[], tags text[]) SERVER {fdw_server} "
        f"OPTIONS (collection '{unique_name}')"
    )
    yield tbl, unique_name
    sql.execute(f"DROP FOREIGN TABLE {tbl}")
    with engine_server.client() as client:
        client.drop_collection(unique_name)


def test_two_dimensional_arrays_are_refused(sql, table, engine_server) -> None:
    tbl, name = table
    _refused(sql, f"INSERT INTO {tbl} (id, embedding) VALUES (2, '{{{{1,2}},{{3,4}}}}')", "multi-dimensional")
    _refused(sql, f"INSERT INTO {tbl} (id, embedding, tags) VALUES (3, '{{1,2,3,4}}', '{{{{a,b}},{{c,d}}}}')", "multi")
    _refused(sql, f"UPDATE {tbl} SET tags = '{{{{a}},{{b}}}}' WHERE id = 1", "multi-dimensional")
    sql.execute(f"INSERT INTO {tbl} (id, embedding, tags) VALUES (4, '{{1,2,3,4}}', '{{x,y}}')")
    with engine_server.client() as client:
        assert client.collection(name).get([2, 3, 4]).ids.tolist() == [4]


def test_token_from_a_setting_warns(sql, drift_sql) -> None:
    notices: list[str] = []
    sql.add_notice_handler(lambda d: notices.append(f"{d.severity_nonlocalized}: {d.message_primary}"))
    sql.execute("SET drift.token = 'not-a-real-token'")
    with contextlib.suppress(psycopg.Error):  # the tests' engine has no token: accepting a stray one is its call
        sql.execute("SELECT drift.health(%s)", (drift_sql.address,))
    assert any(n.startswith("WARNING") and "drift.token" in n for n in notices), notices
    sql.execute("RESET drift.token")
    notices.clear()
    sql.execute("SELECT drift.health(%s)", (drift_sql.address,))
    assert not any("drift.token" in n for n in notices)
