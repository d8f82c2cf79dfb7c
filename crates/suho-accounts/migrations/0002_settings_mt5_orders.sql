-- Each user's settings (risk parameters, watchlist, auto-trading), the whole object as JSON.
CREATE TABLE user_settings (
    user_id    TEXT PRIMARY KEY REFERENCES users (user_id),
    settings   JSONB NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Linked MT5 accounts. The password is sealed with an AEAD (XChaCha20-Poly1305) under the
-- key named by key_id, so keys can be rotated; it is never stored or logged in clear.
CREATE TABLE mt5_accounts (
    user_id     TEXT NOT NULL REFERENCES users (user_id),
    mt5_account TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       BYTEA NOT NULL,
    ciphertext  BYTEA NOT NULL,
    linked_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, mt5_account)
);

-- A client_order_id names one command per user: a retried request gets the first command_id.
CREATE TABLE client_orders (
    user_id         TEXT NOT NULL REFERENCES users (user_id),
    client_order_id TEXT NOT NULL,
    command_id      TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_order_id)
);
