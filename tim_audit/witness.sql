-- The witness's own file (witness.py), apart from any log's: the latest
-- checkpoint it cosigned for each origin it witnesses. A row only ever moves
-- to a checkpoint that extends it, in the transaction that checked that.
CREATE TABLE IF NOT EXISTS witnessed (
    origin TEXT PRIMARY KEY,
    size   INTEGER NOT NULL,  -- leaves
    root   BLOB NOT NULL,
    note   BLOB NOT NULL      -- the signed checkpoint as the log sent it
) STRICT;
