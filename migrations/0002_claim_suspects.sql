-- celeriac 0002: ready messages that came back after a lost lease or a requeue ("suspects")
-- are claimed one at a time.
--
-- A worker that dies takes all the messages it held down with it: the one that killed it and
-- the innocent ones prefetched beside it. All come back with `redeliveries + 1`. If the next
-- worker claimed them together again, a message that kills every worker would take its
-- neighbours to `redeliveries_exhausted` with it. So a claim takes at most one suspect
-- (`redeliveries > 0`) and a worker holds at most one at a time (see docs/delivery.md): a
-- suspect is only ever held beside messages that have not failed before.
--
-- The claim finds suspects through this index (few rows, usually none). `message_claim` stays
-- as it is, so workers of the previous version keep claiming efficiently during a rolling
-- upgrade; the claim's fresh half uses it too, skipping the (rare) suspects among ready rows.
create index message_claim_suspect on celeriac.message (queue, priority desc, eta, id)
    where leased_by is null and redeliveries > 0;
