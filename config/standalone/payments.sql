-- The small payments database of `make demo` and of the test harness:
-- customers, cards (Luhn-valid test PANs, CVVs, expiry) and orders.
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text);
CREATE TABLE cards (id int PRIMARY KEY, customer_id int REFERENCES customers, pan text UNIQUE NOT NULL,
                    cvv text, expiry text, pan_bigint bigint, note text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, card_id int REFERENCES cards,
                     amount_cents int NOT NULL, status text NOT NULL, memo text);
INSERT INTO customers VALUES (1, 'Ada Lovelace', 'ada@example.com'), (2, 'Alan Turing', 'alan@example.com'),
                             (3, 'Grace Hopper', 'grace@example.com');
INSERT INTO cards VALUES
  (1, 1, '4111111111111111', '123', '12/29', 4111111111111111, 'primary card 4111 1111 1111 1111'),
  (2, 1, '5555555555554444', '456', '01/30', 5555555555554444, NULL),
  (3, 2, '378282246310005', '7890', '03/28', 378282246310005, 'amex'),
  (4, 2, '6011111111111117', '321', '04/27', 6011111111111117, NULL),
  (5, 3, '3530111333300000', '654', '05/26', 3530111333300000, 'jcb'),
  (6, 3, '4012888888881881', '987', '06/25', 4012888888881881, 'visa 4012-8888-8888-1881');
INSERT INTO orders SELECT g, 1 + g % 3, 1 + g % 6, g * 100, CASE WHEN g % 5 = 0 THEN 'refunded' ELSE 'paid' END,
                          'order ' || g FROM generate_series(1, 50) g;
