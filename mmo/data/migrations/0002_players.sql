-- Player state of the player service: a JSON document with a version that
-- grows by one on each save.
CREATE TABLE players (
    player_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    version BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
