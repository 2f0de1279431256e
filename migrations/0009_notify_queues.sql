-- One function sends the wake-up that both an enqueue (0001's message_notify) and a resume
-- (0008's queue_resumed_notify) send: the queues as a JSON array of strings, or '*' when that
-- would not fit in a notification's 8000 bytes; nothing when there are none.
create function celeriac.notify_queues(queues text) returns void
language plpgsql as $$
begin
    if queues is not null then
        if octet_length(queues) > 7900 then
            queues := '*';
        end if;
        perform pg_notify('celeriac_message', queues);
    end if;
end
$$;

create or replace function celeriac.message_notify() returns trigger
language plpgsql as $$
begin
    perform celeriac.notify_queues((select json_agg(distinct queue)::text from inserted where eta <= now()));
    return null;
end
$$;

create or replace function celeriac.queue_resumed_notify() returns trigger
language plpgsql as $$
begin
    perform celeriac.notify_queues((select json_agg(distinct queue)::text from resumed));
    return null;
end
$$;
