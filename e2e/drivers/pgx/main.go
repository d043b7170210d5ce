// pgx v5 in the cardgate driver matrix (e2e/tests/drivers.rs): the matrix's
// steps through the sidecar, one JSON line per step. Built into
// target/drivers/bin by `make deps`.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

var last4 = strings.Split(os.Getenv("CARDGATE_PAN_LAST4"), ",")

func report(step string, ok bool, detail string) bool {
	if len(detail) > 500 {
		detail = detail[:500]
	}
	line, _ := json.Marshal(map[string]any{"step": step, "ok": ok, "detail": detail})
	fmt.Println(string(line))
	return ok
}

func masked(values []string) (bool, string) {
	ok := len(values) == len(last4)
	for i, v := range values {
		digits := 0
		for _, c := range v {
			if c >= '0' && c <= '9' {
				digits++
			}
		}
		ok = ok && i < len(last4) && strings.HasSuffix(v, last4[i]) && digits <= 10
	}
	return ok, fmt.Sprint(values)
}

func connect(ctx context.Context) (*pgx.Conn, error) {
	port, _ := strconv.Atoi(os.Getenv("CARDGATE_PORT"))
	cfg, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cfg.Host = os.Getenv("CARDGATE_HOST")
	cfg.Port = uint16(port)
	cfg.User = os.Getenv("CARDGATE_USER")
	cfg.Password = os.Getenv("CARDGATE_TOKEN")
	cfg.Database = os.Getenv("CARDGATE_DB")
	return pgx.ConnectConfig(ctx, cfg)
}

func strings1(ctx context.Context, c *pgx.Conn, sql string) ([]string, error) {
	rows, err := c.Query(ctx, sql)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		var v any
		if err := r.Scan(&v); err != nil {
			return "", err
		}
		switch x := v.(type) {
		case []any:
			parts := make([]string, len(x))
			for i, p := range x {
				parts[i] = fmt.Sprint(p)
			}
			return strings.Join(parts, ""), nil
		default:
			return fmt.Sprint(x), nil
		}
	})
}

type step struct {
	name string
	fn   func() (bool, string, error)
}

func main() {
	ctx := context.Background()
	var c *pgx.Conn
	steps := []step{
		{"connect", func() (bool, string, error) {
			var err error
			c, err = connect(ctx)
			return err == nil, "", err
		}},
		{"simple_query", func() (bool, string, error) {
			// The simple protocol, as pgx's QueryExecModeSimpleProtocol sends it.
			rows, err := c.Query(ctx, "SELECT id, name FROM customers ORDER BY id", pgx.QueryExecModeSimpleProtocol)
			if err != nil {
				return false, "", err
			}
			n := 0
			for rows.Next() {
				n++
			}
			return n == 3 && rows.Err() == nil, fmt.Sprint(n), rows.Err()
		}},
		{"masked_pan", func() (bool, string, error) {
			v, err := strings1(ctx, c, "SELECT pan FROM cards ORDER BY id")
			ok, d := masked(v)
			return ok, d, err
		}},
		{"params_repeated", func() (bool, string, error) {
			// pgx caches the prepared statement after the first use.
			var got []int32
			for i := 1; i <= 12; i++ {
				var v int32
				if err := c.QueryRow(ctx, "SELECT amount_cents FROM orders WHERE id = $1", i).Scan(&v); err != nil {
					return false, "", err
				}
				got = append(got, v)
			}
			ok := len(got) == 12 && got[11] == 1200 && got[0] == 100
			return ok, fmt.Sprint(got), nil
		}},
		{"transaction", func() (bool, string, error) {
			var n int64
			err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				return tx.QueryRow(ctx, "SELECT count(*) FROM orders").Scan(&n)
			})
			return n == 50, fmt.Sprint(n), err
		}},
		{"denied_then_usable", func() (bool, string, error) {
			_, err := c.Exec(ctx, "DROP TABLE cards")
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) {
				return false, fmt.Sprint(err), nil
			}
			var one int
			if err := c.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
				return false, "", err
			}
			return pgErr.Code == "42501" && one == 1, pgErr.Code + " " + pgErr.Message, nil
		}},
		{"server_cursor", func() (bool, string, error) {
			n := 0
			err := pgx.BeginFunc(ctx, c, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, "DECLARE orders_cur CURSOR FOR SELECT id FROM orders ORDER BY id"); err != nil {
					return err
				}
				for {
					rows, err := tx.Query(ctx, "FETCH 7 FROM orders_cur")
					if err != nil {
						return err
					}
					got := 0
					for rows.Next() {
						got++
					}
					if rows.Err() != nil {
						return rows.Err()
					}
					n += got
					if got == 0 {
						return nil
					}
				}
			})
			return n == 50, fmt.Sprint(n), err
		}},
		{"copy_out", func() (bool, string, error) {
			var buf strings.Builder
			_, err := c.PgConn().CopyTo(ctx, &buf, "COPY (SELECT id, pan FROM cards ORDER BY id) TO STDOUT")
			if err != nil {
				return false, "", err
			}
			var v []string
			for _, line := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
				if parts := strings.Split(line, "\t"); len(parts) == 2 {
					v = append(v, parts[1])
				}
			}
			ok, d := masked(v)
			return ok, d, nil
		}},
		{"types", func() (bool, string, error) {
			var arr []int32
			var doc map[string]any
			var num pgtype.Numeric
			var ts pgtype.Timestamptz
			var id pgtype.UUID
			var raw []byte
			err := c.QueryRow(ctx, `SELECT ARRAY[1,2,3]::int4[], '{"a": [1, 2]}'::jsonb, 12.50::numeric,
				'2024-01-02T03:04:05Z'::timestamptz, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '\xdeadbeef'::bytea`).
				Scan(&arr, &doc, &num, &ts, &id, &raw)
			if err != nil {
				return false, "", err
			}
			f, _ := num.Float64Value()
			u, _ := id.Value()
			ok := fmt.Sprint(arr) == "[1 2 3]" && fmt.Sprint(doc) == "map[a:[1 2]]" && f.Float64 == 12.5 &&
				ts.Time.UTC().Second() == 5 && u == "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11" &&
				fmt.Sprintf("%x", raw) == "deadbeef"
			return ok, fmt.Sprint(arr, doc, f.Float64, ts.Time, u, raw), nil
		}},
		{"enum_composite", func() (bool, string, error) {
			// Registering the types makes pgx look them up in the catalog.
			types, err := c.LoadTypes(ctx, []string{"card_brand", "_card_brand", "money_amount"})
			if err != nil {
				return false, "", err
			}
			c.TypeMap().RegisterTypes(types)
			var brand string
			var brands []string
			var cents int32
			var currency string
			err = c.QueryRow(ctx, "SELECT 'visa'::card_brand, ARRAY['amex','visa']::card_brand[], ROW(1250, 'EUR')::money_amount").
				Scan(&brand, &brands, pgtype.CompositeFields{&cents, &currency})
			if err != nil {
				return false, "", err
			}
			ok := brand == "visa" && len(brands) == 2 && cents == 1250 && currency == "EUR"
			return ok, fmt.Sprint(brand, brands, cents, currency), nil
		}},
		{"introspection", func() (bool, string, error) {
			var oid uint32
			err := c.QueryRow(ctx, "SELECT 'card_brand'::regtype::oid").Scan(&oid)
			return err == nil && oid > 0, fmt.Sprint(oid), err
		}},
		{"held_write_approved", func() (bool, string, error) {
			tag, err := c.Exec(ctx, "UPDATE orders SET status = 'paid' WHERE id = 7")
			return err == nil && tag.RowsAffected() == 1, tag.String(), err
		}},
		{"leak_computed_column", func() (bool, string, error) {
			v, err := strings1(ctx, c, "SELECT pan || '' FROM cards ORDER BY id")
			ok, d := masked(v)
			return ok, d, err
		}},
		{"leak_binary_array", func() (bool, string, error) {
			v, err := strings1(ctx, c, "SELECT ARRAY[pan] FROM cards ORDER BY id")
			ok, d := masked(v)
			return ok, d, err
		}},
		{"leak_bigint_pan", func() (bool, string, error) {
			v, err := strings1(ctx, c, "SELECT pan_bigint FROM cards ORDER BY id")
			ok, d := masked(v)
			return ok, d, err
		}},
		{"reconnect", func() (bool, string, error) {
			c.Close(ctx)
			var err error
			if c, err = connect(ctx); err != nil {
				return false, "", err
			}
			var one int
			err = c.QueryRow(ctx, "SELECT 1").Scan(&one)
			return one == 1, "", err
		}},
	}
	for _, s := range steps {
		ok, detail, err := s.fn()
		if err != nil {
			ok = false
			detail = err.Error()
		}
		if !report(s.name, ok, detail) && s.name == "connect" {
			return
		}
	}
	if c != nil {
		c.Close(ctx)
	}
}
