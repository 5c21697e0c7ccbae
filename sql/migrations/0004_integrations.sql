-- Integrations (issue 15): outgoing webhooks for bots, with a transactional outbox of
-- their events, and users signed in by an identity provider's JWT.

-- A bot's webhook. The secret is kept as written (not hashed): every delivery is signed
-- with it, so the server must be able to read it back.
CREATE TABLE webhooks (
    bot_id      bigint PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    url         text NOT NULL,
    secret      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per (bot, message), written by the statement that stores the
-- message (sql/queries/messages.sql), so an acknowledged message always has its events
-- and a rolled-back one never does. A (bot, room) pair is a lane: only its pending row
-- of lowest seq (the head) is ever attempted, which keeps deliveries in seq order.
CREATE TABLE webhook_events (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    bot_id           bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    room_id          bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    message_id       bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq              bigint NOT NULL,
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    last_status      integer,                       -- the HTTP status of the last answer
    last_error       text,                          -- why the last attempt failed, if it did
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    -- A claim: the process holding `lease` delivers the row until `leased_until`. A
    -- lease rather than a row lock held over the HTTP call, so that no transaction (and
    -- no pooled connection) stays open for up to the 10 s timeout, and a SIGKILLed
    -- process's claim simply runs out.
    lease            text,
    leased_until     timestamptz,
    finished_at      timestamptz
);
-- The heads of the lanes: pending rows only, so delivered history costs the worker nothing.
CREATE INDEX webhook_events_lane_idx ON webhook_events (bot_id, room_id, seq)
    WHERE status = 'pending';
-- The oldest pending event, for the lag gauge.
CREATE INDEX webhook_events_pending_age_idx ON webhook_events (created_at)
    WHERE status = 'pending';
-- The owner's list of deliveries, newest first.
CREATE INDEX webhook_events_bot_idx ON webhook_events (bot_id, id);

-- Users made by a JWT's first sight: one per (issuer, subject), whatever names later
-- tokens carry. `issuer` is '' for tokens without `iss` (allowed when no
-- AUTH_JWT_ISSUER is configured).
CREATE TABLE identities (
    issuer      text NOT NULL,
    subject     text NOT NULL,
    user_id     bigint NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (issuer, subject)
);
