"""One driver of the cardgate driver matrix (e2e/tests/drivers.rs).

Usage: matrix.py psycopg|psycopg-binary|psycopg2|asyncpg|sqlalchemy-psycopg|sqlalchemy-asyncpg

Connects through the sidecar with the agent's token as the password (from
CARDGATE_HOST, CARDGATE_PORT, CARDGATE_USER, CARDGATE_TOKEN, CARDGATE_DB) and
runs the matrix's steps, printing one JSON line per step:
{"step": name, "ok": bool, "detail": text}. A step that raises is reported as
failed with the error; the Rust test decides what must pass.
"""

import asyncio
import json
import os
import sys
import traceback
from decimal import Decimal

HOST = os.environ["CARDGATE_HOST"]
PORT = int(os.environ["CARDGATE_PORT"])
USER = os.environ["CARDGATE_USER"]
TOKEN = os.environ["CARDGATE_TOKEN"]
DB = os.environ["CARDGATE_DB"]
# Last four digits of the stored PANs, in id order: a masked PAN keeps them.
LAST4 = os.environ["CARDGATE_PAN_LAST4"].split(",")

TYPES_SQL = (
    "SELECT ARRAY[1,2,3]::int4[] AS arr, '{\"a\": [1, 2]}'::jsonb AS doc, 12.50::numeric AS num, "
    "'2024-01-02T03:04:05Z'::timestamptz AS ts, "
    "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id, '\\xdeadbeef'::bytea AS raw"
)
ENUM_SQL = "SELECT 'visa'::card_brand AS brand, ARRAY['amex', 'visa']::card_brand[] AS brands"
COMPOSITE_SQL = "SELECT ROW(1250, 'EUR')::money_amount AS amount"
HOLD_SQL = "UPDATE orders SET status = 'paid' WHERE id = 7"


def report(step, ok, detail=""):
    print(json.dumps({"step": step, "ok": bool(ok), "detail": str(detail)[:500]}), flush=True)


def run(step, fn):
    try:
        result = fn()
        if asyncio.iscoroutine(result):
            result = asyncio.get_event_loop().run_until_complete(result)
        ok, detail = result if isinstance(result, tuple) else (bool(result), "")
        report(step, ok, detail)
        return bool(ok)
    except Exception as e:  # noqa: BLE001 - every failure is a report
        report(step, False, f"{type(e).__name__}: {e} | {traceback.format_exc(limit=2)!r}")
        return False


def masked(values):
    """Every value is a masked PAN: text that keeps the last four digits of
    the card in that row and is not a full card number."""
    values = [v if isinstance(v, str) else str(v) for v in values]
    ok = len(values) == len(LAST4) and all(
        v.endswith(l4) and sum(c.isdigit() for c in v) <= 10 for v, l4 in zip(values, LAST4)
    )
    return ok, values


def types_ok(row):
    arr, doc, num, ts, uid, raw = row
    ok = (
        list(arr) == [1, 2, 3]
        and (doc == {"a": [1, 2]} or json.loads(doc) == {"a": [1, 2]})
        and Decimal(str(num)) == Decimal("12.50")
        and ts.year == 2024 and ts.second == 5
        and str(uid) == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"
        and bytes(raw) == b"\xde\xad\xbe\xef"
    )
    return ok, repr(row)


def sqlstate(e):
    return getattr(e, "sqlstate", None) or getattr(e, "pgcode", None) or getattr(
        getattr(e, "orig", None), "sqlstate", None
    ) or getattr(getattr(e, "orig", None), "pgcode", None)


# ---------------------------------------------------------------- psycopg 3

def psycopg_steps(binary):
    import psycopg
    from psycopg.types import TypeInfo

    state = {}

    def connect():
        state["c"] = psycopg.connect(
            host=HOST, port=PORT, user=USER, password=TOKEN, dbname=DB, autocommit=True
        )
        return True, psycopg.__version__

    def cur():
        return state["c"].cursor(binary=binary)

    def simple():
        rows = cur().execute("SELECT id, name FROM customers ORDER BY id").fetchall()
        return len(rows) == 3 and rows[0][1] == "Ada Lovelace", rows

    def masked_pans():
        return masked([r[0] for r in cur().execute("SELECT pan FROM cards ORDER BY id").fetchall()])

    def params():
        # psycopg prepares a statement server-side after 5 executions.
        c = cur()
        got = [c.execute("SELECT amount_cents FROM orders WHERE id = %s", (i,)).fetchone()[0] for i in range(1, 13)]
        return got == [i * 100 for i in range(1, 13)], got

    def transaction():
        c = state["c"]
        with c.transaction():
            n = c.execute("SELECT count(*) FROM orders").fetchone()[0]
        return n == 50, n

    def denied():
        try:
            state["c"].execute("DROP TABLE cards")
            return False, "DROP was not refused"
        except psycopg.Error as e:
            after = state["c"].execute("SELECT 1").fetchone()[0]
            return e.sqlstate == "42501" and after == 1, f"{e.sqlstate} {e}"

    def cursor():
        c = state["c"]
        with c.transaction():
            with c.cursor(name="orders_cur", binary=binary) as sc:
                sc.execute("SELECT id FROM orders ORDER BY id")
                first = sc.fetchmany(5)
                rest = sc.fetchall()
        return len(first) == 5 and len(rest) == 45, len(rest)

    def copy_out():
        data = b""
        with cur().copy("COPY (SELECT id, pan FROM cards ORDER BY id) TO STDOUT") as cp:
            for block in cp:
                data += bytes(block)
        lines = data.decode().splitlines()
        return masked([line.split("\t")[1] for line in lines])

    def types():
        return types_ok(cur().execute(TYPES_SQL).fetchone())

    def enums():
        # Registered as psycopg documents it: both look the types up.
        from psycopg.types.composite import CompositeInfo, register_composite
        from psycopg.types.enum import EnumInfo, register_enum
        register_enum(EnumInfo.fetch(state["c"], "card_brand"), state["c"])
        register_composite(CompositeInfo.fetch(state["c"], "money_amount"), state["c"])
        row = cur().execute(ENUM_SQL + ", " + COMPOSITE_SQL[len("SELECT "):]).fetchone()
        ok = row[0].name == "visa" and [b.name for b in row[1]] == ["amex", "visa"] and tuple(row[2]) == (1250, "EUR")
        return ok, repr(row)

    def introspection():
        info = TypeInfo.fetch(state["c"], "card_brand")
        hstore = TypeInfo.fetch(state["c"], "hstore")
        return info is not None and info.name == "card_brand" and hstore is None, repr(info)

    def held_write():
        n = state["c"].execute(HOLD_SQL).rowcount
        return n == 1, n

    def reconnect():
        state["c"].close()
        connect()
        return state["c"].execute("SELECT 1").fetchone()[0] == 1

    def computed():
        return masked([r[0] for r in cur().execute("SELECT pan || '' FROM cards ORDER BY id").fetchall()])

    def array_binary():
        rows = state["c"].cursor(binary=True).execute("SELECT ARRAY[pan] FROM cards ORDER BY id").fetchall()
        return masked([r[0][0] for r in rows])

    def bigint():
        return masked([r[0] for r in cur().execute("SELECT pan_bigint FROM cards ORDER BY id").fetchall()])

    return [
        ("connect", connect), ("simple_query", simple), ("masked_pan", masked_pans),
        ("params_repeated", params), ("transaction", transaction), ("denied_then_usable", denied),
        ("server_cursor", cursor), ("copy_out", copy_out), ("types", types), ("enum_composite", enums),
        ("introspection", introspection), ("held_write_approved", held_write),
        ("leak_computed_column", computed), ("leak_binary_array", array_binary),
        ("leak_bigint_pan", bigint), ("reconnect", reconnect),
    ]


# ---------------------------------------------------------------- psycopg2

def psycopg2_steps():
    import psycopg2
    import psycopg2.extras

    state = {}

    def connect():
        state["c"] = psycopg2.connect(host=HOST, port=PORT, user=USER, password=TOKEN, dbname=DB)
        state["c"].autocommit = True
        return True, psycopg2.__version__

    def q(sql, args=None):
        c = state["c"].cursor()
        c.execute(sql, args)
        return c

    def simple():
        rows = q("SELECT id, name FROM customers ORDER BY id").fetchall()
        return len(rows) == 3, rows

    def masked_pans():
        return masked([r[0] for r in q("SELECT pan FROM cards ORDER BY id").fetchall()])

    def params():
        got = [q("SELECT amount_cents FROM orders WHERE id = %s", (i,)).fetchone()[0] for i in range(1, 13)]
        return got == [i * 100 for i in range(1, 13)], got

    def transaction():
        c = state["c"]
        c.autocommit = False
        try:
            n = q("SELECT count(*) FROM orders").fetchone()[0]
            c.commit()
        finally:
            c.autocommit = True
        return n == 50, n

    def denied():
        try:
            q("DROP TABLE cards")
            return False, "DROP was not refused"
        except psycopg2.Error as e:
            return e.pgcode == "42501" and q("SELECT 1").fetchone()[0] == 1, f"{e.pgcode} {e}"

    def cursor():
        c = state["c"]
        c.autocommit = False
        try:
            sc = c.cursor(name="orders_cur")
            sc.itersize = 7
            sc.execute("SELECT id FROM orders ORDER BY id")
            ids = [r[0] for r in sc]
            sc.close()
            c.commit()
        finally:
            c.autocommit = True
        return ids == list(range(1, 51)), len(ids)

    def copy_out():
        import io
        buf = io.StringIO()
        state["c"].cursor().copy_expert("COPY (SELECT id, pan FROM cards ORDER BY id) TO STDOUT", buf)
        return masked([line.split("\t")[1] for line in buf.getvalue().splitlines()])

    def types():
        return types_ok(q(TYPES_SQL).fetchone())

    def enums():
        row = q(ENUM_SQL + ", " + COMPOSITE_SQL[len("SELECT "):]).fetchone()
        return row[0] == "visa", repr(row)

    def introspection():
        # What SQLAlchemy's psycopg2 dialect sends to find hstore.
        rows = q(
            "SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid "
            "WHERE typname = 'hstore'"
        ).fetchall()
        return rows == [], rows

    def held_write():
        return q(HOLD_SQL).rowcount == 1

    def reconnect():
        state["c"].close()
        connect()
        return q("SELECT 1").fetchone()[0] == 1

    def computed():
        return masked([r[0] for r in q("SELECT pan || '' FROM cards ORDER BY id").fetchall()])

    def bigint():
        return masked([r[0] for r in q("SELECT pan_bigint FROM cards ORDER BY id").fetchall()])

    return [
        ("connect", connect), ("simple_query", simple), ("masked_pan", masked_pans),
        ("params_repeated", params), ("transaction", transaction), ("denied_then_usable", denied),
        ("server_cursor", cursor), ("copy_out", copy_out), ("types", types), ("enum_composite", enums),
        ("introspection", introspection), ("held_write_approved", held_write),
        ("leak_computed_column", computed), ("leak_bigint_pan", bigint), ("reconnect", reconnect),
    ]


# ---------------------------------------------------------------- asyncpg

def asyncpg_steps():
    import asyncpg

    state = {}

    async def connect():
        state["c"] = await asyncpg.connect(host=HOST, port=PORT, user=USER, password=TOKEN, database=DB)
        return True, asyncpg.__version__

    async def simple():
        rows = await state["c"].fetch("SELECT id, name FROM customers ORDER BY id")
        return len(rows) == 3, [tuple(r) for r in rows]

    async def masked_pans():
        # asyncpg reads every column in binary.
        return masked([r[0] for r in await state["c"].fetch("SELECT pan FROM cards ORDER BY id")])

    async def params():
        got = [await state["c"].fetchval("SELECT amount_cents FROM orders WHERE id = $1", i) for i in range(1, 13)]
        return got == [i * 100 for i in range(1, 13)], got

    async def transaction():
        async with state["c"].transaction():
            n = await state["c"].fetchval("SELECT count(*) FROM orders")
        return n == 50, n

    async def denied():
        try:
            await state["c"].execute("DROP TABLE cards")
            return False, "DROP was not refused"
        except asyncpg.PostgresError as e:
            return e.sqlstate == "42501" and await state["c"].fetchval("SELECT 1") == 1, f"{e.sqlstate} {e}"

    async def cursor():
        ids = []
        async with state["c"].transaction():
            async for r in state["c"].cursor("SELECT id FROM orders ORDER BY id", prefetch=7):
                ids.append(r[0])
        return ids == list(range(1, 51)), len(ids)

    async def copy_out():
        import io
        buf = io.BytesIO()
        await state["c"].copy_from_query("SELECT id, pan FROM cards ORDER BY id", output=buf)
        return masked([line.split("\t")[1] for line in buf.getvalue().decode().splitlines()])

    async def types():
        return types_ok(tuple(await state["c"].fetchrow(TYPES_SQL)))

    async def enums():
        # Unknown types make asyncpg introspect: jit off, then pg_type lookups.
        row = await state["c"].fetchrow(ENUM_SQL)
        comp = await state["c"].fetchval(COMPOSITE_SQL)
        ok = row["brand"] == "visa" and list(row["brands"]) == ["amex", "visa"] and tuple(comp) == (1250, "EUR")
        return ok, repr((tuple(row), tuple(comp)))

    async def introspection():
        # What asyncpg's set_type_codec (used by SQLAlchemy) sends.
        await state["c"].set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        return await state["c"].fetchval("SELECT '{\"x\": 1}'::json") == {"x": 1}

    async def held_write():
        status = await state["c"].execute(HOLD_SQL)
        return status == "UPDATE 1", status

    async def reconnect():
        await state["c"].close()
        await connect()
        return await state["c"].fetchval("SELECT 1") == 1

    async def computed():
        return masked([r[0] for r in await state["c"].fetch("SELECT pan || '' FROM cards ORDER BY id")])

    async def array_binary():
        return masked([r[0][0] for r in await state["c"].fetch("SELECT ARRAY[pan] FROM cards ORDER BY id")])

    async def bigint():
        return masked([r[0] for r in await state["c"].fetch("SELECT pan_bigint FROM cards ORDER BY id")])

    return [
        ("connect", connect), ("simple_query", simple), ("masked_pan", masked_pans),
        ("params_repeated", params), ("transaction", transaction), ("denied_then_usable", denied),
        ("server_cursor", cursor), ("copy_out", copy_out), ("types", types), ("enum_composite", enums),
        ("introspection", introspection), ("held_write_approved", held_write),
        ("leak_computed_column", computed), ("leak_binary_array", array_binary),
        ("leak_bigint_pan", bigint), ("reconnect", reconnect),
    ]


# ---------------------------------------------------------------- SQLAlchemy

def sqlalchemy_steps(dialect):
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Customer(Base):
        __tablename__ = "customers"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str]

    class Card(Base):
        __tablename__ = "cards"
        id: Mapped[int] = mapped_column(primary_key=True)
        pan: Mapped[str]

    url = sa.engine.URL.create(
        f"postgresql+{dialect}", username=USER, password=TOKEN, host=HOST, port=PORT, database=DB
    )
    state = {}

    def engine():
        if dialect == "asyncpg":
            from sqlalchemy.ext.asyncio import create_async_engine
            return create_async_engine(url)
        return sa.create_engine(url)

    async def in_session(fn):
        if dialect == "asyncpg":
            from sqlalchemy.ext.asyncio import AsyncSession
            async with AsyncSession(state["e"]) as s:
                return await s.run_sync(fn)
        with Session(state["e"]) as s:
            return fn(s)

    def connect():
        # The dialect's setup (version, current_schema, hstore, JSON codecs)
        # runs on the first connection.
        state["e"] = engine()

        def one(s):
            return s.execute(sa.text("SELECT 1")).scalar()
        return in_session(one)

    async def check(fn):
        return await in_session(fn)

    def simple():
        return check(lambda s: (lambda rows: (len(rows) == 3, [c.name for c in rows]))(
            s.scalars(sa.select(Customer).order_by(Customer.id)).all()))

    def masked_pans():
        return check(lambda s: masked(s.scalars(sa.select(Card.pan).order_by(Card.id)).all()))

    def params():
        def go(s):
            got = [s.execute(sa.text("SELECT amount_cents FROM orders WHERE id = :i"), {"i": i}).scalar()
                   for i in range(1, 13)]
            return got == [i * 100 for i in range(1, 13)], got
        return check(go)

    def transaction():
        def go(s):
            with s.begin():
                n = s.execute(sa.text("SELECT count(*) FROM orders")).scalar()
            return n == 50, n
        return check(go)

    def denied():
        def go(s):
            try:
                s.execute(sa.text("DROP TABLE cards"))
                return False, "DROP was not refused"
            except sa.exc.DBAPIError as e:
                s.rollback()
                code = sqlstate(e)
                return code == "42501" and s.execute(sa.text("SELECT 1")).scalar() == 1, f"{code} {e.orig}"
        return check(go)

    def cursor():
        def go(s):
            res = s.execute(sa.select(Customer.id).order_by(Customer.id), execution_options={"yield_per": 2})
            ids = [r[0] for r in res]
            return ids == [1, 2, 3], ids
        return check(go)

    def types():
        return check(lambda s: types_ok(tuple(s.execute(sa.text(TYPES_SQL)).one())))

    def enums():
        return check(lambda s: (lambda r: (r[0] == "visa", repr(r)))(s.execute(sa.text(ENUM_SQL)).one()))

    def introspection():
        def go(s):
            insp = sa.inspect(s.connection())
            return insp.has_table("cards"), insp.default_schema_name
        return check(go)

    def reconnect():
        async def go():
            if dialect == "asyncpg":
                await state["e"].dispose()
            else:
                state["e"].dispose()
            return await in_session(lambda s: s.execute(sa.text("SELECT 1")).scalar() == 1)
        return go()

    return [
        ("connect", connect), ("simple_query", simple), ("masked_pan", masked_pans),
        ("params_repeated", params), ("transaction", transaction), ("denied_then_usable", denied),
        ("server_cursor", cursor), ("types", types), ("enum_composite", enums),
        ("introspection", introspection), ("reconnect", reconnect),
    ]


def main():
    variant = sys.argv[1]
    steps = {
        "psycopg": lambda: psycopg_steps(binary=False),
        "psycopg-binary": lambda: psycopg_steps(binary=True),
        "psycopg2": psycopg2_steps,
        "asyncpg": asyncpg_steps,
        "sqlalchemy-psycopg": lambda: sqlalchemy_steps("psycopg"),
        "sqlalchemy-asyncpg": lambda: sqlalchemy_steps("asyncpg"),
    }[variant]()
    asyncio.set_event_loop(asyncio.new_event_loop())
    for name, fn in steps:
        if not run(name, fn) and name == "connect":
            break


if __name__ == "__main__":
    main()
