// node-postgres in the cardgate driver matrix (e2e/tests/drivers.rs): the
// matrix's steps through the sidecar, one JSON line per step. pg is
// installed under target/drivers/node by `make deps`.
'use strict';

const path = require('path');
const pg = require(require.resolve('pg', {
  paths: [path.join(process.env.CARDGATE_DRIVERS_DIR, 'node')],
}));

const LAST4 = process.env.CARDGATE_PAN_LAST4.split(',');
const config = {
  host: process.env.CARDGATE_HOST,
  port: Number(process.env.CARDGATE_PORT),
  user: process.env.CARDGATE_USER,
  password: process.env.CARDGATE_TOKEN,
  database: process.env.CARDGATE_DB,
};

function report(step, ok, detail) {
  console.log(JSON.stringify({ step, ok: Boolean(ok), detail: String(detail ?? '').slice(0, 500) }));
  return Boolean(ok);
}

function masked(values) {
  values = values.map(String);
  const ok = values.length === LAST4.length &&
    values.every((v, i) => v.endsWith(LAST4[i]) && (v.match(/[0-9]/g) || []).length <= 10);
  return [ok, JSON.stringify(values)];
}

async function main() {
  let c;
  const connect = async () => {
    c = new pg.Client(config);
    await c.connect();
    return [true, ''];
  };
  const q = (text, values) => c.query(text, values);
  const steps = [
    ['connect', connect],
    ['simple_query', async () => {
      const r = await q('SELECT id, name FROM customers ORDER BY id');
      return [r.rows.length === 3, r.rows.length];
    }],
    ['masked_pan', async () => masked((await q('SELECT pan FROM cards ORDER BY id')).rows.map((r) => r.pan))],
    ['params_repeated', async () => {
      // A named statement is parsed once and reused.
      const got = [];
      for (let i = 1; i <= 12; i++) {
        const r = await q({ name: 'amount', text: 'SELECT amount_cents FROM orders WHERE id = $1', values: [i] });
        got.push(r.rows[0].amount_cents);
      }
      return [got.every((v, i) => v === (i + 1) * 100), JSON.stringify(got)];
    }],
    ['transaction', async () => {
      await q('BEGIN');
      const r = await q('SELECT count(*)::int AS n FROM orders');
      await q('COMMIT');
      return [r.rows[0].n === 50, r.rows[0].n];
    }],
    ['denied_then_usable', async () => {
      try {
        await q('DROP TABLE cards');
        return [false, 'DROP was not refused'];
      } catch (e) {
        const one = (await q('SELECT 1 AS one')).rows[0].one;
        return [e.code === '42501' && one === 1, `${e.code} ${e.message}`];
      }
    }],
    ['server_cursor', async () => {
      await q('BEGIN');
      await q('DECLARE orders_cur CURSOR FOR SELECT id FROM orders ORDER BY id');
      const ids = [];
      for (;;) {
        const r = await q('FETCH 7 FROM orders_cur');
        if (r.rows.length === 0) break;
        ids.push(...r.rows.map((x) => x.id));
      }
      await q('COMMIT');
      return [ids.length === 50 && ids[49] === 50, ids.length];
    }],
    ['types', async () => {
      const r = (await q(`SELECT ARRAY[1,2,3]::int4[] AS arr, '{"a": [1, 2]}'::jsonb AS doc, 12.50::numeric AS num,
        '2024-01-02T03:04:05Z'::timestamptz AS ts, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS id,
        '\\xdeadbeef'::bytea AS raw`)).rows[0];
      const ok = JSON.stringify(r.arr) === '[1,2,3]' && JSON.stringify(r.doc) === '{"a":[1,2]}' &&
        r.num === '12.50' && r.ts.getUTCSeconds() === 5 && r.id === 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11' &&
        r.raw.toString('hex') === 'deadbeef';
      return [ok, JSON.stringify(r)];
    }],
    ['enum_composite', async () => {
      const r = (await q(`SELECT 'visa'::card_brand AS brand, ROW(1250, 'EUR')::money_amount AS amount`)).rows[0];
      return [r.brand === 'visa' && r.amount === '(1250,EUR)', JSON.stringify(r)];
    }],
    ['introspection', async () => {
      const r = await q(`SELECT t.oid, typarray FROM pg_type t JOIN pg_namespace ns ON typnamespace = ns.oid
        WHERE typname = $1`, ['card_brand']);
      return [r.rows.length === 1, JSON.stringify(r.rows)];
    }],
    ['held_write_approved', async () => {
      const r = await q(`UPDATE orders SET status = 'paid' WHERE id = 7`);
      return [r.rowCount === 1, r.rowCount];
    }],
    ['leak_computed_column', async () =>
      masked((await q(`SELECT pan || '' AS p FROM cards ORDER BY id`)).rows.map((r) => r.p))],
    ['leak_bigint_pan', async () =>
      masked((await q('SELECT pan_bigint FROM cards ORDER BY id')).rows.map((r) => r.pan_bigint))],
    ['reconnect', async () => {
      await c.end();
      await connect();
      return [(await q('SELECT 1 AS one')).rows[0].one === 1, ''];
    }],
  ];
  for (const [name, fn] of steps) {
    let ok;
    try {
      const [pass, detail] = await fn();
      ok = report(name, pass, detail);
    } catch (e) {
      ok = report(name, false, `${e.code || ''} ${e.message}`);
    }
    if (!ok && name === 'connect') break;
  }
  await c.end().catch(() => {});
}

main();
