//! `celeriac dead-letters redrive|purge`: puts dead letters back in their queue, or deletes them.

use celeriac_store::{DeadLetterFilter, DeadLetterReason};
use clap::{Args, Subcommand};

use super::{store, CliError};

/// `celeriac dead-letters …`
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Move matching dead letters back into their queue as new messages (e.g. after deploying
    /// the handler of a task that was not registered).
    Redrive(DeadLetterSelection),
    /// Delete matching dead letters.
    Purge(DeadLetterSelection),
}

/// Which dead letters; give at least one condition, or `--all`.
#[derive(Debug, Args)]
pub struct DeadLetterSelection {
    /// Dead-letter row ids (as `inspect dead-letters` prints them).
    #[arg(long = "id", value_name = "ID")]
    pub ids: Vec<i64>,
    /// Only this queue.
    #[arg(short = 'Q', long)]
    pub queue: Option<String>,
    /// Only this reason code: undecodable, content_disallowed, too_large, not_registered,
    /// rejected, redeliveries_exhausted.
    #[arg(long, value_name = "REASON_CODE")]
    pub reason_code: Option<DeadLetterReason>,
    /// Only this task name.
    #[arg(long)]
    pub task: Option<String>,
    /// Every dead letter.
    #[arg(long, conflicts_with_all = ["ids", "queue", "reason_code", "task"])]
    pub all: bool,
}

impl DeadLetterSelection {
    /// The store's filter for this selection; an error if it selects nothing in particular
    /// without `--all`.
    fn filter(&self) -> Result<DeadLetterFilter, CliError> {
        let filter = DeadLetterFilter {
            ids: (!self.ids.is_empty()).then(|| self.ids.clone()),
            queue: self.queue.clone(),
            reason_code: self.reason_code,
            task_name: self.task.clone(),
        };
        if filter == DeadLetterFilter::default() && !self.all {
            return Err(CliError::NoDeadLetterSelection);
        }
        Ok(filter)
    }
}

/// Redrives or purges the selected dead letters and says how many.
pub(super) async fn run(url: &str, action: DeadLetterAction) -> Result<(), CliError> {
    match action {
        DeadLetterAction::Redrive(selection) => {
            let n = store(url, 1)?.dead_letter_redrive(&selection.filter()?).await?;
            println!("redrove {n} dead letter(s)");
        }
        DeadLetterAction::Purge(selection) => {
            let n = store(url, 1)?.dead_letter_purge(&selection.filter()?).await?;
            println!("purged {n} dead letter(s)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selection() -> DeadLetterSelection {
        DeadLetterSelection { ids: vec![], queue: None, reason_code: None, task: None, all: false }
    }

    #[test]
    fn a_selection_names_something_or_says_all() {
        let err = selection().filter().unwrap_err();
        assert_eq!(err.to_string(), "say which dead letters: --id, -Q/--queue, --reason-code, --task, or --all");
        assert_eq!(DeadLetterSelection { all: true, ..selection() }.filter().unwrap(), DeadLetterFilter::default());
        let filter =
            DeadLetterSelection { ids: vec![3], task: Some("proj.add".into()), ..selection() }.filter().unwrap();
        assert_eq!((filter.ids, filter.task_name.as_deref()), (Some(vec![3]), Some("proj.add")));
    }

    #[test]
    fn reason_codes_are_the_stored_ones() {
        use clap::Parser;

        #[derive(Parser)]
        struct Command {
            #[command(flatten)]
            selection: DeadLetterSelection,
        }
        let parsed = Command::try_parse_from(["x", "--reason-code", "not_registered"]).unwrap();
        assert_eq!(parsed.selection.reason_code, Some(DeadLetterReason::NotRegistered));
        let err = Command::try_parse_from(["x", "--reason-code", "lost"]).err().unwrap().to_string();
        assert!(err.contains("unknown dead-letter reason \"lost\"") && err.contains("redeliveries_exhausted"), "{err}");
    }
}
