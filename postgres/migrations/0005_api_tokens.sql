-- Schema api: the bearer tokens of the HTTP and WebSocket API (tillflow serve).
-- Runs as tillflow_owner.
--
-- A token reads `tillflow_<id>_<secret>`. The id (12 hex digits) is public: it
-- names the token in `tillflow token list`, in logs and in revocations. The
-- secret is 32 random bytes (base64url) and only its sha256 is stored, so this
-- table (or a backup of it) never lets anyone call the API. A fast hash is the
-- right one here: a 256-bit random secret cannot be guessed back from its hash,
-- whereas slow hashes (bcrypt, argon2) protect low-entropy human passwords and
-- would add milliseconds to every request. The API compares digests in
-- constant time.
--
-- Each token is bound to one store: it may write that store's transactions
-- only. A revoked token is kept (revoked_at), never deleted, so an id seen in a
-- log stays explainable.
--
--   tillflow_owner   `tillflow token create|list|revoke`
--   tillflow_writer  the API: reads tokens, records when each was last used

CREATE SCHEMA api AUTHORIZATION tillflow_owner;
REVOKE ALL ON SCHEMA api FROM PUBLIC;

CREATE TABLE api.tokens (
    id            text        PRIMARY KEY,
    secret_sha256 bytea       NOT NULL,
    store_id      text        NOT NULL,
    name          text        NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz,

    CONSTRAINT tokens_id_check CHECK (id ~ '^[0-9a-f]{12}$'),
    CONSTRAINT tokens_secret_sha256_check CHECK (octet_length(secret_sha256) = 32),
    -- The same rule as sales.transactions.store_id: a token may only name a
    -- store whose rows can be stored.
    CONSTRAINT tokens_store_id_check CHECK (store_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    CONSTRAINT tokens_name_check CHECK (length(name) <= 200),
    CONSTRAINT tokens_revoked_at_check CHECK (revoked_at >= created_at)
);
COMMENT ON TABLE api.tokens IS
    'API bearer tokens, one store each; only sha256 of the secret is stored. Managed by `tillflow token`.';

GRANT USAGE ON SCHEMA api TO tillflow_writer;
GRANT SELECT ON api.tokens TO tillflow_writer;
GRANT UPDATE (last_used_at) ON api.tokens TO tillflow_writer;
