// pgjdbc in the cardgate driver matrix (e2e/tests/drivers.rs): the matrix's
// steps through the sidecar, one JSON line per step. Run from source
// (`java -cp postgresql.jar Matrix.java`); the jar comes from Maven Central
// into target/drivers/jdbc by `make deps`.

import java.io.StringWriter;
import java.sql.*;
import java.util.*;
import org.postgresql.PGConnection;
import org.postgresql.copy.CopyManager;

public class Matrix {
    interface Body { Object[] run() throws Exception; }

    static final String[] LAST4 = System.getenv("CARDGATE_PAN_LAST4").split(",");
    static Connection c;

    static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char ch : s.toCharArray()) {
            if (ch == '"' || ch == '\\') b.append('\\').append(ch);
            else if (ch < 0x20) b.append(String.format("\\u%04x", (int) ch));
            else b.append(ch);
        }
        return b.append('"').toString();
    }

    static boolean report(String step, boolean ok, String detail) {
        if (detail.length() > 500) detail = detail.substring(0, 500);
        System.out.println("{\"step\":" + quote(step) + ",\"ok\":" + ok + ",\"detail\":" + quote(detail) + "}");
        return ok;
    }

    static Object[] masked(List<String> values) {
        boolean ok = values.size() == LAST4.length;
        for (int i = 0; ok && i < values.size(); i++) {
            String v = values.get(i);
            ok = v != null && v.endsWith(LAST4[i]) && v.chars().filter(Character::isDigit).count() <= 10;
        }
        return new Object[] {ok, values.toString()};
    }

    static List<String> column(String sql) throws SQLException {
        List<String> out = new ArrayList<>();
        try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(sql)) {
            while (r.next()) out.add(r.getString(1));
        }
        return out;
    }

    static void connect() throws SQLException {
        String url = "jdbc:postgresql://" + System.getenv("CARDGATE_HOST") + ":" + System.getenv("CARDGATE_PORT")
            + "/" + System.getenv("CARDGATE_DB");
        Properties p = new Properties();
        p.setProperty("user", System.getenv("CARDGATE_USER"));
        p.setProperty("password", System.getenv("CARDGATE_TOKEN"));
        p.setProperty("sslmode", "disable");
        // Server-prepared statements from the first execution, in binary.
        p.setProperty("prepareThreshold", "1");
        c = DriverManager.getConnection(url, p);
    }

    public static void main(String[] args) throws Exception {
        LinkedHashMap<String, Body> steps = new LinkedHashMap<>();
        steps.put("connect", () -> { connect(); return new Object[] {true, c.getMetaData().getDriverVersion()}; });
        steps.put("simple_query", () -> {
            List<String> v = column("SELECT name FROM customers ORDER BY id");
            return new Object[] {v.size() == 3, v.toString()};
        });
        steps.put("masked_pan", () -> masked(column("SELECT pan FROM cards ORDER BY id")));
        steps.put("params_repeated", () -> {
            List<Integer> got = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT amount_cents FROM orders WHERE id = ?")) {
                for (int i = 1; i <= 12; i++) {
                    ps.setInt(1, i);
                    try (ResultSet r = ps.executeQuery()) { r.next(); got.add(r.getInt(1)); }
                }
            }
            return new Object[] {got.get(0) == 100 && got.get(11) == 1200, got.toString()};
        });
        steps.put("transaction", () -> {
            c.setAutoCommit(false);
            long n;
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery("SELECT count(*) FROM orders")) {
                r.next(); n = r.getLong(1);
            }
            c.commit();
            c.setAutoCommit(true);
            return new Object[] {n == 50, "" + n};
        });
        steps.put("denied_then_usable", () -> {
            try (Statement s = c.createStatement()) {
                s.execute("DROP TABLE cards");
                return new Object[] {false, "DROP was not refused"};
            } catch (SQLException e) {
                List<String> one = column("SELECT 1");
                return new Object[] {"42501".equals(e.getSQLState()) && one.equals(List.of("1")),
                    e.getSQLState() + " " + e.getMessage()};
            }
        });
        steps.put("server_cursor", () -> {
            // A fetch size inside a transaction makes pgjdbc read through a portal.
            c.setAutoCommit(false);
            int n = 0;
            try (Statement s = c.createStatement()) {
                s.setFetchSize(7);
                try (ResultSet r = s.executeQuery("SELECT id FROM orders ORDER BY id")) { while (r.next()) n++; }
            }
            c.commit();
            c.setAutoCommit(true);
            return new Object[] {n == 50, "" + n};
        });
        steps.put("copy_out", () -> {
            CopyManager cm = c.unwrap(PGConnection.class).getCopyAPI();
            StringWriter w = new StringWriter();
            cm.copyOut("COPY (SELECT id, pan FROM cards ORDER BY id) TO STDOUT", w);
            List<String> v = new ArrayList<>();
            for (String line : w.toString().split("\n")) if (line.contains("\t")) v.add(line.split("\t")[1]);
            return masked(v);
        });
        steps.put("types", () -> {
            try (Statement s = c.createStatement(); ResultSet r = s.executeQuery(
                    "SELECT ARRAY[1,2,3]::int4[], '{\"a\": [1, 2]}'::jsonb, 12.50::numeric, "
                    + "'2024-01-02T03:04:05Z'::timestamptz, 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, '\\xdeadbeef'::bytea")) {
                r.next();
                Integer[] arr = (Integer[]) r.getArray(1).getArray();
                String doc = r.getString(2);
                java.math.BigDecimal num = r.getBigDecimal(3);
                Timestamp ts = r.getTimestamp(4);
                Object uuid = r.getObject(5);
                byte[] raw = r.getBytes(6);
                boolean ok = Arrays.equals(arr, new Integer[] {1, 2, 3}) && doc.equals("{\"a\": [1, 2]}")
                    && num.compareTo(new java.math.BigDecimal("12.50")) == 0 && ts.getTime() == 1704164645000L
                    && uuid.toString().equals("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
                    && Arrays.equals(raw, new byte[] {(byte) 0xde, (byte) 0xad, (byte) 0xbe, (byte) 0xef});
                return new Object[] {ok, Arrays.toString(arr) + " " + doc + " " + num + " " + ts.getTime() + " " + uuid};
            }
        });
        steps.put("enum_composite", () -> {
            try (PreparedStatement ps = c.prepareStatement(
                    "SELECT 'visa'::card_brand, ROW(1250, 'EUR')::money_amount, ARRAY['amex','visa']::card_brand[]");
                 ResultSet r = ps.executeQuery()) {
                r.next();
                Object[] brands = (Object[]) r.getArray(3).getArray();
                boolean ok = "visa".equals(r.getString(1)) && "(1250,EUR)".equals(r.getString(2)) && brands.length == 2;
                return new Object[] {ok, r.getString(1) + " " + r.getString(2) + " " + Arrays.toString(brands)};
            }
        });
        steps.put("introspection", () -> {
            DatabaseMetaData md = c.getMetaData();
            return new Object[] {md.getDatabaseProductVersion() != null, md.getDatabaseProductVersion()};
        });
        steps.put("held_write_approved", () -> {
            try (Statement s = c.createStatement()) {
                int n = s.executeUpdate("UPDATE orders SET status = 'paid' WHERE id = 7");
                return new Object[] {n == 1, "" + n};
            }
        });
        steps.put("leak_computed_column", () -> masked(column("SELECT pan || '' FROM cards ORDER BY id")));
        steps.put("leak_binary_array", () -> {
            List<String> v = new ArrayList<>();
            try (PreparedStatement ps = c.prepareStatement("SELECT ARRAY[pan] FROM cards ORDER BY id");
                 ResultSet r = ps.executeQuery()) {
                while (r.next()) v.add(String.join("", (String[]) r.getArray(1).getArray()));
            }
            return masked(v);
        });
        steps.put("leak_bigint_pan", () -> masked(column("SELECT pan_bigint FROM cards ORDER BY id")));
        steps.put("reconnect", () -> {
            c.close();
            connect();
            return new Object[] {column("SELECT 1").equals(List.of("1")), ""};
        });
        for (Map.Entry<String, Body> s : steps.entrySet()) {
            boolean ok;
            try {
                Object[] r = s.getValue().run();
                ok = report(s.getKey(), (Boolean) r[0], String.valueOf(r[1]));
            } catch (Exception e) {
                try { if (c != null && !c.getAutoCommit()) { c.rollback(); c.setAutoCommit(true); } } catch (SQLException ignored) { }
                ok = report(s.getKey(), false, e.getClass().getSimpleName() + ": " + e.getMessage());
            }
            if (!ok && s.getKey().equals("connect")) return;
        }
        if (c != null) c.close();
    }
}
