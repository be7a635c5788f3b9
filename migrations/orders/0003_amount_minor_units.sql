-- Amounts keep the decimals of their currency's minor unit (JPY 0, EUR 2,
-- KWD 3, CLF 4): an unconstrained numeric stores "1000" and "1.234" as sent,
-- where numeric(20,2) would have rounded the third decimal away. Relaxing the
-- type modifier rewrites no row; the checks keep what numeric(20,2) bounded.
ALTER TABLE orders
    ALTER COLUMN amount TYPE numeric,
    ADD CONSTRAINT orders_amount_bounds CHECK (amount < 1e18 AND scale(amount) <= 4);
