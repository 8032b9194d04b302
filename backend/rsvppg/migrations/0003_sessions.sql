-- rsvp schema version 3: sessions (backend.Message.SessionKey and
-- ReplySession). Runs with search_path set to the target schema. The package
-- documentation (doc.go) describes the rules for programs in other languages.

-- session_key is NULL for a request without a session. A request with one is
-- leased only while no request of its queue and session key with a lower seq
-- is stored: the session's requests go one at a time, in seq order.
-- reply_session is carried for the responder ('' for none).
ALTER TABLE requests
    ADD COLUMN session_key   text,
    ADD COLUMN reply_session text NOT NULL DEFAULT '';

-- For the claim's look for an earlier request of the same session. Requests
-- without a session are not in it.
CREATE INDEX requests_session ON requests (queue, session_key, seq) WHERE session_key IS NOT NULL;

ALTER TABLE dead_letters
    ADD COLUMN session_key   text,
    ADD COLUMN reply_session text NOT NULL DEFAULT '';
