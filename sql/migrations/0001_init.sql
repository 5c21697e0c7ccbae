-- The whole schema of the chat: users, their sessions, rooms, members, messages.
-- Applied once by chat/migrate.py inside a transaction, under an advisory lock.

CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL CHECK (username ~ '^[A-Za-z0-9_.-]{3,32}$'),
    password_hash  text,                          -- null for bots: they log in by token only
    bot            boolean NOT NULL DEFAULT false,
    owner_id       bigint REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (bot = (owner_id IS NOT NULL))
);
-- Unique without regard to case, enforced here rather than by check-then-insert.
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE sessions (
    token_hash    bytea PRIMARY KEY,              -- sha256 of the token; the token itself is never stored
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_idle  boolean NOT NULL,               -- user sessions expire when idle; bot tokens do not
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

CREATE TABLE rooms (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    private     boolean NOT NULL DEFAULT false,
    created_by  bigint NOT NULL REFERENCES users (id),
    -- the pair of a direct-message room, "low:high" user ids; unique so two racing creators share one room
    dm_key      text UNIQUE,
    -- the newest seq of the room: the row lock on it orders concurrent sends within one room only
    last_seq    bigint NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE members (
    room_id    bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    user_id    bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    read_seq   bigint NOT NULL DEFAULT 0,          -- the read position: unread = rooms.last_seq - read_seq
    joined_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (room_id, user_id)
);
CREATE INDEX members_user_idx ON members (user_id);

CREATE TABLE messages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id     bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    sender_id   bigint NOT NULL REFERENCES users (id),
    body        text,                              -- null once deleted (a tombstone keeps its seq)
    client_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    edited_at   timestamptz,
    deleted     boolean NOT NULL DEFAULT false,
    CHECK (deleted = (body IS NULL)),
    -- keyset pagination and replay read by this index
    UNIQUE (room_id, seq),
    -- an idempotent send: two racing duplicates store one row
    UNIQUE (room_id, sender_id, client_id)
);
