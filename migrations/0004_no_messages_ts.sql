-- 0.6.0: no index on messages(ts). Every stored message wrote a page of it
-- (encrypted, authenticated and synced with the commit), for the retention
-- sweep alone, which now finds its cut along the rowid instead: messages
-- are appended in the order the host stamps them.

DROP INDEX IF EXISTS messages_ts;
