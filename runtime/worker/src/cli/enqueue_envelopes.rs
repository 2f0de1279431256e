//! `celeriac enqueue-envelopes`: enqueues kombu envelopes as they are, one JSON document per line.

use std::io::BufRead as _;

use celeriac_store::{NewMessage, Store};
use clap::Args;

use super::{store, CliError};

/// `celeriac enqueue-envelopes` options.
#[derive(Debug, Args)]
pub struct EnvelopeArgs {
    /// File with one envelope per line, or `-` for standard input.
    pub file: String,
    /// Rows per insert statement.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
}

/// Enqueues the envelopes of `args.file` and says how many.
pub(super) async fn run(url: &str, args: &EnvelopeArgs) -> Result<(), CliError> {
    enqueue_envelopes(&store(url, 1)?, args).await
}

/// Reads envelopes and enqueues them unchanged; the queue, priority, eta, expiry, task name and
/// id columns are read from each envelope. A line that is not a readable envelope is still
/// enqueued (queue from `delivery_info` if readable, else `celery`), so the worker dead-letters
/// it with its reason instead of it being lost here.
async fn enqueue_envelopes(store: &Store, args: &EnvelopeArgs) -> Result<(), CliError> {
    let reader: Box<dyn std::io::BufRead> = if args.file == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(&args.file).map_err(|source| CliError::OpenFile { path: args.file.clone(), source })?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut batch = Vec::with_capacity(args.batch.max(1));
    let mut total = 0u64;
    for line in reader.lines() {
        let line = line.map_err(|source| CliError::ReadFile { path: args.file.clone(), source })?;
        if line.trim().is_empty() {
            continue;
        }
        batch.push(NewMessage::from_envelope(line.into_bytes()));
        if batch.len() >= args.batch.max(1) {
            total += store.message_insert_many(&batch).await?;
            batch.clear();
        }
    }
    total += store.message_insert_many(&batch).await?;
    println!("enqueued {total} message(s)");
    Ok(())
}
