-- celeriac 0002: ready messages that were redelivered after a lost lease ("suspects") are
-- claimed apart from the others.
--
-- A worker that dies takes all the messages it held down with it: the one that killed it and
-- the innocent ones prefetched beside it. All come back with `redeliveries + 1`. If the next
-- worker claimed them together again, a message that kills every worker would take its
-- neighbours to `redeliveries_exhausted` with it. So a claim takes at most one suspect
-- (`redeliveries > 0`) and a worker holds at most one at a time (see docs/delivery.md): a
-- suspect is only ever held beside messages that have not failed before.
--
-- Two disjoint partial indexes serve the two halves of the claim: fresh rows, and suspects
-- (few, usually none).
drop index celeriac.message_claim;
create index message_claim on celeriac.message (queue, priority desc, eta, id)
    where leased_by is null and redeliveries = 0;
create index message_claim_suspect on celeriac.message (queue, priority desc, eta, id)
    where leased_by is null and redeliveries > 0;
