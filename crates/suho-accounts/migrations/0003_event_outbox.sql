-- The transactional outbox: an event is inserted in the same transaction as the change it
-- describes (settings, MT5 links), so the two are stored together or not at all. The relay
-- publishes the rows to Kafka in id order and deletes each one Kafka has acknowledged.
CREATE TABLE event_outbox (
    id         BIGSERIAL PRIMARY KEY,
    topic      TEXT NOT NULL,
    key        TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload    BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
