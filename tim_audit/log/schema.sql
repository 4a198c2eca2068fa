-- The tim-audit log. Every table here holds received data and is append-only
-- for any connection to the file: triggers refuse UPDATE, DELETE and any
-- INSERT that would meet an existing key (so REPLACE and upserts fail too,
-- whatever recursive_triggers says). Each event and quarantine row carries
-- the hash that chains it to the row before it; see chain.py.
--
-- The tables are STRICT, so a value of any other type than its column's is
-- refused too (SQLite 3.37+). Logs created before that keep their tables as
-- they were (CREATE TABLE IF NOT EXISTS leaves them alone); verify checks
-- every chained value's type itself, so a changed type shows there.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS event (
    id           INTEGER PRIMARY KEY,
    received_at  INTEGER NOT NULL,  -- ms since the epoch, UTC
    command      TEXT NOT NULL,
    group_id     TEXT NOT NULL,
    type         TEXT NOT NULL,
    name         TEXT NOT NULL,
    name_folded  TEXT NOT NULL,     -- casefold(name), for case-insensitive search
    operator     TEXT NOT NULL,
    owner        TEXT,              -- NULL when the body has no Owner_Account
    event_time   INTEGER NOT NULL,  -- EventTime, ms since the epoch
    member_count INTEGER NOT NULL,
    user_data    TEXT,              -- UserDefinedDataList as JSON, NULL when absent
    sdkappid     TEXT NOT NULL,
    client_ip    TEXT,
    opt_platform TEXT,
    peer         TEXT,
    raw          BLOB NOT NULL,     -- the body exactly as received
    hash         TEXT NOT NULL,
    UNIQUE (group_id, event_time, command)
) STRICT;

-- Pages list newest EventTime first, so every filter column has an index
-- that goes on with event_time: a page is a short index range and a count an
-- index count. type rides along in the indexes it is most often combined
-- with, and name_folded in the time index, so a count of those filters reads
-- that index alone (a covering index: tests/test_search.py asserts the
-- plans), and a page checks them there before it reads a row.
CREATE INDEX IF NOT EXISTS event_by_time ON event (event_time, name_folded, type);
CREATE INDEX IF NOT EXISTS event_by_type ON event (type, event_time);
CREATE INDEX IF NOT EXISTS event_by_owner ON event (owner, event_time, type);
CREATE INDEX IF NOT EXISTS event_by_operator ON event (operator, event_time, type);

-- Initial members, one row each, so "which groups was X put into" is read
-- newest first straight off an index. Positions run from 0 to the event's
-- member_count - 1 and are all filled when the event is appended, so no
-- member can be added later. event_time repeats the event's; duplicate is 1
-- where the account is already listed earlier in the same MemberList, so
-- that a search finds each event once.
CREATE TABLE IF NOT EXISTS event_member (
    event_id   INTEGER NOT NULL,
    position   INTEGER NOT NULL,
    account    TEXT NOT NULL,
    event_time INTEGER NOT NULL,
    duplicate  INTEGER NOT NULL,
    PRIMARY KEY (event_id, position)
) WITHOUT ROWID, STRICT;

CREATE INDEX IF NOT EXISTS event_member_by_account
    ON event_member (account, duplicate, event_time);

-- Authenticated deliveries of a recorded command that were rejected, kept
-- with their bytes (NULL when over the size limit) and the reason.
CREATE TABLE IF NOT EXISTS quarantine (
    id             INTEGER PRIMARY KEY,
    received_at    INTEGER NOT NULL,
    error_code     INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    command        TEXT,
    query          TEXT NOT NULL,   -- the query string without Sign
    peer           TEXT,
    content_length INTEGER,
    raw            BLOB,
    hash           TEXT NOT NULL
) STRICT;

-- A refused body a sender retries is recognised by its bytes and not stored
-- again (records._quarantined_before): this index narrows the comparison to
-- rows of the same ErrorCode, length and first 64 bytes, newest first.
CREATE INDEX IF NOT EXISTS quarantine_by_retry
    ON quarantine (error_code, length(raw), substr(raw, 1, 64));

-- A conflicting repeat's reason starts "repeat of event N (" (callback.py);
-- its event's page finds the repeats here, newest first and counted up to a
-- cap, however many an authenticated sender has sent.
CREATE INDEX IF NOT EXISTS quarantine_by_repeat
    ON quarantine (error_code, substr(reason, 1, instr(reason, '(')));

CREATE TRIGGER IF NOT EXISTS meta_no_update BEFORE UPDATE ON meta
BEGIN SELECT RAISE(ABORT, 'meta is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_delete BEFORE DELETE ON meta
BEGIN SELECT RAISE(ABORT, 'meta is append-only'); END;
CREATE TRIGGER IF NOT EXISTS meta_no_replace BEFORE INSERT ON meta
WHEN EXISTS (SELECT 1 FROM meta WHERE key = NEW.key)
BEGIN SELECT RAISE(ABORT, 'meta is append-only'); END;

CREATE TRIGGER IF NOT EXISTS event_no_update BEFORE UPDATE ON event
BEGIN SELECT RAISE(ABORT, 'event is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_no_delete BEFORE DELETE ON event
BEGIN SELECT RAISE(ABORT, 'event is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_no_replace BEFORE INSERT ON event
WHEN EXISTS (SELECT 1 FROM event WHERE id = NEW.id)
  OR EXISTS (SELECT 1 FROM event WHERE group_id = NEW.group_id
             AND event_time = NEW.event_time AND command = NEW.command)
BEGIN SELECT RAISE(ABORT, 'event is append-only'); END;

CREATE TRIGGER IF NOT EXISTS event_member_no_update BEFORE UPDATE ON event_member
BEGIN SELECT RAISE(ABORT, 'event_member is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_member_no_delete BEFORE DELETE ON event_member
BEGIN SELECT RAISE(ABORT, 'event_member is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_member_no_replace BEFORE INSERT ON event_member
WHEN NOT coalesce(NEW.position >= 0 AND NEW.position <
                  (SELECT member_count FROM event WHERE id = NEW.event_id), 0)
  OR EXISTS (SELECT 1 FROM event_member
             WHERE event_id = NEW.event_id AND position = NEW.position)
BEGIN SELECT RAISE(ABORT, 'event_member is append-only'); END;

CREATE TRIGGER IF NOT EXISTS quarantine_no_update BEFORE UPDATE ON quarantine
BEGIN SELECT RAISE(ABORT, 'quarantine is append-only'); END;
CREATE TRIGGER IF NOT EXISTS quarantine_no_delete BEFORE DELETE ON quarantine
BEGIN SELECT RAISE(ABORT, 'quarantine is append-only'); END;
CREATE TRIGGER IF NOT EXISTS quarantine_no_replace BEFORE INSERT ON quarantine
WHEN EXISTS (SELECT 1 FROM quarantine WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'quarantine is append-only'); END;

-- The Merkle trees over event and quarantine rows (merkle.py): leaf N - 1
-- is row N's canonical bytes. Each table holds its tree's stored hashes, in
-- the layout of Go's sumdb/tlog (tlog.py): id is the stored-hash index,
-- hashes come in id order without gaps, and are written in the same
-- transaction as their rows.
CREATE TABLE IF NOT EXISTS event_tree (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
) STRICT;

CREATE TABLE IF NOT EXISTS quarantine_tree (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL
) STRICT;

-- Every signed checkpoint (checkpoints.py), as served: ``note`` holds its
-- exact bytes. A tree's checkpoints never shrink.
CREATE TABLE IF NOT EXISTS checkpoint (
    id        INTEGER PRIMARY KEY,
    tree      TEXT NOT NULL,     -- 'event' or 'quarantine'
    size      INTEGER NOT NULL,  -- leaves
    root      BLOB NOT NULL,
    signed_at INTEGER NOT NULL,  -- ms since the epoch, UTC
    key       TEXT NOT NULL,     -- the verifier key that signed it, name+keyid+base64
    note      BLOB NOT NULL
) STRICT;

CREATE INDEX IF NOT EXISTS checkpoint_by_tree ON checkpoint (tree, id);

CREATE TRIGGER IF NOT EXISTS event_tree_no_update BEFORE UPDATE ON event_tree
BEGIN SELECT RAISE(ABORT, 'event_tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_tree_no_delete BEFORE DELETE ON event_tree
BEGIN SELECT RAISE(ABORT, 'event_tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS event_tree_no_replace BEFORE INSERT ON event_tree
WHEN NEW.id IS NOT coalesce((SELECT max(id) FROM event_tree) + 1, 0) OR length(NEW.hash) != 32
BEGIN SELECT RAISE(ABORT, 'event_tree is append-only'); END;

CREATE TRIGGER IF NOT EXISTS quarantine_tree_no_update BEFORE UPDATE ON quarantine_tree
BEGIN SELECT RAISE(ABORT, 'quarantine_tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS quarantine_tree_no_delete BEFORE DELETE ON quarantine_tree
BEGIN SELECT RAISE(ABORT, 'quarantine_tree is append-only'); END;
CREATE TRIGGER IF NOT EXISTS quarantine_tree_no_replace BEFORE INSERT ON quarantine_tree
WHEN NEW.id IS NOT coalesce((SELECT max(id) FROM quarantine_tree) + 1, 0) OR length(NEW.hash) != 32
BEGIN SELECT RAISE(ABORT, 'quarantine_tree is append-only'); END;

CREATE TRIGGER IF NOT EXISTS checkpoint_no_update BEFORE UPDATE ON checkpoint
BEGIN SELECT RAISE(ABORT, 'checkpoint is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoint_no_delete BEFORE DELETE ON checkpoint
BEGIN SELECT RAISE(ABORT, 'checkpoint is append-only'); END;
CREATE TRIGGER IF NOT EXISTS checkpoint_no_replace BEFORE INSERT ON checkpoint
WHEN EXISTS (SELECT 1 FROM checkpoint WHERE id = NEW.id)
  OR NEW.size < (SELECT max(size) FROM checkpoint WHERE tree = NEW.tree)
BEGIN SELECT RAISE(ABORT, 'checkpoint is append-only'); END;

-- Every cosignature a witness gave a checkpoint of the event tree
-- (witnesses.py): the signature line it answered, which GET /checkpoint
-- appends to the checkpoint's note. ``witness`` is its verifier key, as
-- configured in WITNESSES when it was stored; verify checks each line with
-- the configured key, never with this column alone.
CREATE TABLE IF NOT EXISTS cosignature (
    id            INTEGER PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoint (id),
    witness       TEXT NOT NULL,
    cosigned_at   INTEGER NOT NULL,  -- the cosignature's own timestamp, seconds since the epoch
    line          BLOB NOT NULL      -- em dash, space, witness name, space, base64, newline
) STRICT;

CREATE UNIQUE INDEX IF NOT EXISTS cosignature_by_checkpoint ON cosignature (checkpoint_id, witness);
CREATE INDEX IF NOT EXISTS cosignature_by_witness ON cosignature (witness, checkpoint_id);

CREATE TRIGGER IF NOT EXISTS cosignature_no_update BEFORE UPDATE ON cosignature
BEGIN SELECT RAISE(ABORT, 'cosignature is append-only'); END;
CREATE TRIGGER IF NOT EXISTS cosignature_no_delete BEFORE DELETE ON cosignature
BEGIN SELECT RAISE(ABORT, 'cosignature is append-only'); END;
CREATE TRIGGER IF NOT EXISTS cosignature_no_replace BEFORE INSERT ON cosignature
WHEN EXISTS (SELECT 1 FROM cosignature WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'cosignature is append-only'); END;

-- Every RFC 3161 timestamp of an event checkpoint (timestamps.py): the TSA's
-- whole answer (a DER TimeStampResp over SHA-256 of the checkpoint's note, as
-- the log signed it), which `openssl ts -verify` reads as it is. verify
-- checks each against TIMESTAMP_CA, never against anything in this file.
CREATE TABLE IF NOT EXISTS timestamp (
    id            INTEGER PRIMARY KEY,
    checkpoint_id INTEGER NOT NULL REFERENCES checkpoint (id),
    stamped_at    INTEGER NOT NULL,  -- the token's genTime, seconds since the epoch
    token         BLOB NOT NULL
) STRICT;

CREATE UNIQUE INDEX IF NOT EXISTS timestamp_by_checkpoint ON timestamp (checkpoint_id);

CREATE TRIGGER IF NOT EXISTS timestamp_no_update BEFORE UPDATE ON timestamp
BEGIN SELECT RAISE(ABORT, 'timestamp is append-only'); END;
CREATE TRIGGER IF NOT EXISTS timestamp_no_delete BEFORE DELETE ON timestamp
BEGIN SELECT RAISE(ABORT, 'timestamp is append-only'); END;
CREATE TRIGGER IF NOT EXISTS timestamp_no_replace BEFORE INSERT ON timestamp
WHEN EXISTS (SELECT 1 FROM timestamp WHERE id = NEW.id)
BEGIN SELECT RAISE(ABORT, 'timestamp is append-only'); END;

-- Derived data, kept in step with event by the trigger below, in the
-- transaction that appends the event. It is not chained and not
-- append-only: `tim-audit rebuild-index` makes it again from the chained
-- rows (derived.py), whatever became of it, and verify compares it with
-- them (a difference is `FAIL derived ...`).
--
-- event_name: the folded names in an FTS5 trigram index, which answers a
-- substring of 3 or more characters. It reads the names themselves from
-- event (external content), so it stores only the trigrams; the folding is
-- done by casefold() before it, so the tokenizer must not fold again. It
-- holds the first 1024 characters of each name (derived.NAME_INDEXED), so
-- that no name, however long, holds the writer; FTS5's own 'rebuild' and
-- 'integrity-check' would read whole names, so they are never used on it.
CREATE VIRTUAL TABLE IF NOT EXISTS event_name USING fts5(
    name_folded, content = 'event', content_rowid = 'id',
    tokenize = 'trigram case_sensitive 1', columnsize = 0
);

-- event_hour: how many events of each type have an EventTime in each UTC
-- hour (EventTime / 3600000), so that a count or a chart by type and time
-- adds up whole hours and counts only the hours cut by its bounds. Not
-- STRICT: a log from before STRICT tables may hold a type of another type.
CREATE TABLE IF NOT EXISTS event_hour (
    hour   INTEGER NOT NULL,
    type   TEXT NOT NULL,
    events INTEGER NOT NULL,
    PRIMARY KEY (hour, type)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS event_hour_by_type ON event_hour (type, hour, events);

CREATE TRIGGER IF NOT EXISTS event_derived AFTER INSERT ON event
BEGIN
    INSERT INTO event_name (rowid, name_folded) VALUES (NEW.id, substr(NEW.name_folded, 1, 1024));
    INSERT INTO event_hour (hour, type, events) VALUES (NEW.event_time / 3600000, NEW.type, 1)
        ON CONFLICT DO UPDATE SET events = events + 1;
END;

-- Only tim-audit's read-write connections (the writer's, and the rebuild's
-- while no server runs) change event_hour: these triggers call
-- tim_audit_writer(), a function only they register (derived.py), so the
-- same change from any other connection (the sqlite3 shell, another
-- program) fails with "no such function", and so does an event appended
-- there. Read-only connections never run them, so reads need no function.
-- event_name is a virtual table, which takes no trigger; its FTS5 shadow
-- tables take them, but SQLite 3.40 crashes (a segmentation fault) when
-- FTS5's own writes fire one, so it has none. This guards against a stray
-- statement, not against whoever holds the file, who can drop triggers or
-- register the function: verify's comparison with the chained rows finds
-- what they did to either table, and queries stop using a name index that
-- lost rows (derived.current).
CREATE TRIGGER IF NOT EXISTS event_hour_insert BEFORE INSERT ON event_hour
WHEN NOT tim_audit_writer() BEGIN SELECT RAISE(ABORT, 'event_hour is derived data'); END;
CREATE TRIGGER IF NOT EXISTS event_hour_update BEFORE UPDATE ON event_hour
WHEN NOT tim_audit_writer() BEGIN SELECT RAISE(ABORT, 'event_hour is derived data'); END;
CREATE TRIGGER IF NOT EXISTS event_hour_delete BEFORE DELETE ON event_hour
WHEN NOT tim_audit_writer() BEGIN SELECT RAISE(ABORT, 'event_hour is derived data'); END;
