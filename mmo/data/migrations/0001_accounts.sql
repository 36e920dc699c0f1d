-- Accounts of the sso service. user_id is the login name; password_hash is
-- "scrypt$N$r$p$<salt hex>$<hash hex>", so that the cost can be raised later.
CREATE TABLE accounts (
    user_id TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
