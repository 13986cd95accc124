-- Replay of a stream pattern with a literal prefix (`orders.*`, `tenant-a.>`):
-- the selector bounds the names by a range in the C collation, which only an
-- index in that collation can serve (the database's default collation may
-- order '.' and '-' differently from their code points).
CREATE INDEX events_stream_c_position ON sse_stream.events ((stream COLLATE "C"), xid, id);
