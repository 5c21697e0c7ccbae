-- Conversations (issue 12): threads, reactions, mentions. A reply is an ordinary message
-- of its room with thread_id set; its root's reply_count and last_reply_at are kept by the
-- statement that stores the reply, under the room's row lock, so no count drifts.

ALTER TABLE messages
    ADD COLUMN thread_id      bigint REFERENCES messages (id),
    ADD COLUMN reply_count    integer NOT NULL DEFAULT 0,
    ADD COLUMN last_reply_at  timestamptz,
    -- the members mentioned by @name, in order of first appearance (resolved at insert/edit)
    ADD COLUMN mentions       bigint[] NOT NULL DEFAULT '{}',
    ADD COLUMN mention_room   boolean NOT NULL DEFAULT false,
    -- the aggregate the contract shows ([{"emoji", "count", "users"}]), rewritten under the
    -- message's row lock by every reaction change; null when there is none, so that reading
    -- a plain message costs nothing more
    ADD COLUMN reactions      jsonb;

-- A thread's replies in seq order: `?thread=` history and the unread count of a thread.
CREATE INDEX messages_thread_idx ON messages (thread_id, seq) WHERE thread_id IS NOT NULL;
-- The @room messages of a room: mention counts above a read position, a user's mentions.
CREATE INDEX messages_mention_room_idx ON messages (room_id, seq) WHERE mention_room;

-- Who was mentioned by name where: a user's mentions newest first, and per room above
-- the read position. Rewritten with the message on an edit.
CREATE TABLE mentions (
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    room_id     bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    seq         bigint NOT NULL,
    PRIMARY KEY (user_id, message_id)
);
CREATE INDEX mentions_room_idx ON mentions (user_id, room_id, seq);
CREATE INDEX mentions_message_idx ON mentions (message_id);

-- One row per (message, emoji, user); `ord` orders emoji by first use and users by when
-- they reacted (created_at cannot: one transaction has one now()).
CREATE TABLE reactions (
    message_id  bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    emoji       text NOT NULL,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    ord         bigint GENERATED ALWAYS AS IDENTITY,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (message_id, emoji, user_id)
);

-- The threads a user follows (posted the root, replied, or was mentioned by name in a
-- reply) and their read position in each (a room seq: replies are room messages).
CREATE TABLE thread_follows (
    user_id   bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    root_id   bigint NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    room_id   bigint NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    read_seq  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, root_id)
);
-- A root's followers, to notify them of a reply.
CREATE INDEX thread_follows_root_idx ON thread_follows (root_id);
