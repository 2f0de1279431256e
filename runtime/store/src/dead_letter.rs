//! Dead letters: the messages that could not be run, with their reasons and original bytes;
//! listed, redriven into their queue, or purged.

use celeriac_protocol::DeadLetterReason;
use chrono::{DateTime, Utc};
use tokio_postgres::types::Type;

use crate::{sql::Session, Result, Store};

/// A dead-lettered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Row id in `dead_letter`.
    pub id: i64,
    /// Queue it was in.
    pub queue: String,
    /// Task name, when known.
    pub task_name: Option<String>,
    /// Task id, when known.
    pub task_id: Option<String>,
    /// Machine-readable reason.
    pub reason_code: String,
    /// Human-readable reason.
    pub reason: String,
    /// The original envelope bytes.
    pub payload: Vec<u8>,
    /// Claims before it was dead-lettered.
    pub attempt: i32,
    /// When.
    pub failed_at: DateTime<Utc>,
}

impl Store {
    /// The newest `limit` dead letters, newest first.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_list(&self, limit: i64) -> Result<Vec<DeadLetter>> {
        let client = self.pool.get().await?;
        let rows = client
            .rows(
                self.pooler,
                "select id, queue, task_name, task_id, reason_code, reason, payload, attempt, failed_at
                 from celeriac.dead_letter order by id desc limit $1",
                &[(&limit, Type::INT8)],
            )
            .await?;
        Ok(rows.iter().map(from_row).collect())
    }
}

/// A dead letter from `id, queue, task_name, task_id, reason_code, reason, payload, attempt,
/// failed_at`.
pub(crate) fn from_row(r: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: r.get(0),
        queue: r.get(1),
        task_name: r.get(2),
        task_id: r.get(3),
        reason_code: r.get(4),
        reason: r.get(5),
        payload: r.get(6),
        attempt: r.get(7),
        failed_at: r.get(8),
    }
}

/// Which dead letters an operation applies to; every given condition must hold. An empty
/// filter matches every dead letter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only these `dead_letter` row ids.
    pub ids: Option<Vec<i64>>,
    /// Only this queue.
    pub queue: Option<String>,
    /// Only this reason code (`not_registered`, `undecodable`, …).
    pub reason_code: Option<DeadLetterReason>,
    /// Only this task name.
    pub task_name: Option<String>,
}

impl DeadLetterFilter {
    /// The parameters of [`DEAD_LETTER_MATCH`]; `code` holds the reason's code.
    fn params<'a>(&'a self, code: &'a Option<&'static str>) -> [crate::sql::Param<'a>; 4] {
        [(&self.ids, Type::INT8_ARRAY), (&self.queue, Type::TEXT), (code, Type::TEXT), (&self.task_name, Type::TEXT)]
    }
}

const DEAD_LETTER_MATCH: &str = "($1::int8[] is null or id = any($1))
      and ($2::text is null or queue = $2)
      and ($3::text is null or reason_code = $3)
      and ($4::text is null or task_name = $4)";

impl Store {
    /// Moves matching dead letters back into the queue as new, ready messages (original
    /// envelope, queue, priority and task name/id; attempts and redeliveries start over), in one
    /// transaction. Returns how many. Waiting workers are woken as by any enqueue.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_redrive(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let client = self.pool.get().await?;
        let sql = format!(
            "with moved as (
                 delete from celeriac.dead_letter where {DEAD_LETTER_MATCH}
                 returning queue, priority, task_name, task_id, payload
             )
             insert into celeriac.message (queue, priority, task_name, task_id, payload)
             select queue, priority, task_name, task_id, payload from moved"
        );
        let code = filter.reason_code.map(DeadLetterReason::as_str);
        client.touch(self.pooler, &sql, &filter.params(&code)).await
    }

    /// Deletes matching dead letters. Returns how many.
    ///
    /// # Errors
    /// Connection errors.
    pub async fn dead_letter_purge(&self, filter: &DeadLetterFilter) -> Result<u64> {
        let client = self.pool.get().await?;
        let sql = format!("delete from celeriac.dead_letter where {DEAD_LETTER_MATCH}");
        let code = filter.reason_code.map(DeadLetterReason::as_str);
        client.touch(self.pooler, &sql, &filter.params(&code)).await
    }
}
