//! The single writer thread and its group commit.

use rusqlite::{Connection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::{GROUP_COMMIT_JOBS_MAX, OnConnection, StoreError};
use crate::metrics::Metrics;

/// A unit of work for the writer. `run` executes inside the group's transaction and returns
/// the reply to send once the transaction's fate is known; `fail` answers a job that never ran.
pub(crate) trait WriteJob: Send {
    fn run(self: Box<Self>, tx: &mut Transaction<'_>) -> Box<dyn Reply>;
    fn fail(self: Box<Self>, error: StoreError);
}

/// Delivers a job's result after the commit (or the commit's error).
pub(crate) trait Reply: Send {
    fn send(self: Box<Self>, commit: &Result<(), CommitError>);
}

struct Job<F, R> {
    f: F,
    done: oneshot::Sender<Result<R, StoreError>>,
}

struct Pending<R> {
    result: Result<R, StoreError>,
    done: oneshot::Sender<Result<R, StoreError>>,
}

pub(crate) fn job<R: Send + 'static>(
    f: impl OnConnection<R>,
    done: oneshot::Sender<Result<R, StoreError>>,
) -> Box<dyn WriteJob> {
    Box::new(Job { f, done })
}

impl<R: Send + 'static, F: OnConnection<R>> WriteJob for Job<F, R> {
    fn run(self: Box<Self>, tx: &mut Transaction<'_>) -> Box<dyn Reply> {
        let Job { f, done } = *self;
        // The savepoint confines a failed job's writes to itself; dropping it uncommitted
        // rolls it back.
        let result = match tx.savepoint() {
            Ok(sp) => match f(&sp) {
                Ok(r) => sp.commit().map(|()| r).map_err(StoreError::from),
                Err(e) => Err(e),
            },
            Err(e) => Err(e.into()),
        };
        Box::new(Pending { result, done })
    }

    fn fail(self: Box<Self>, error: StoreError) {
        let _ = self.done.send(Err(error));
    }
}

impl<R: Send> Reply for Pending<R> {
    fn send(self: Box<Self>, commit: &Result<(), CommitError>) {
        let result = match commit {
            Ok(()) => self.result,
            // The job's own error is more useful than the commit's when it already failed.
            Err(e) => self.result.and_then(|_| Err(e.to_store_error())),
        };
        // The requester may have gone away (client disconnected); its rows are committed.
        let _ = self.done.send(result);
    }
}

/// The writer loop: take a burst of jobs, run them in one transaction, commit, reply.
/// Returns when every sender is gone and the queue is drained.
pub(crate) fn run(
    mut conn: Connection,
    mut rx: mpsc::Receiver<Box<dyn WriteJob>>,
    metrics: &Metrics,
) {
    let mut jobs: Vec<Box<dyn WriteJob>> = Vec::with_capacity(GROUP_COMMIT_JOBS_MAX);
    while let Some(first) = rx.blocking_recv() {
        jobs.push(first);
        while jobs.len() < GROUP_COMMIT_JOBS_MAX {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let n = jobs.len();
        let mut tx = match conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let e = CommitError::from(e);
                for j in jobs.drain(..) {
                    j.fail(e.to_store_error());
                }
                continue;
            }
        };
        let replies: Vec<Box<dyn Reply>> = jobs.drain(..).map(|j| j.run(&mut tx)).collect();
        let commit = tx.commit().map_err(CommitError::from);
        if commit.is_err() {
            metrics.commit_failures.inc();
        }
        metrics.commit_batch_size.observe(n as f64);
        for r in replies {
            r.send(&commit);
        }
    }
}

/// Why a group commit failed, kept so every job of the group gets the same answer. A full
/// disk stays a full disk (the API answers `507 disk_full`), not "corrupt".
#[derive(Debug, Clone)]
pub(crate) struct CommitError {
    message: String,
    disk_full: bool,
}

impl From<rusqlite::Error> for CommitError {
    fn from(e: rusqlite::Error) -> Self {
        Self {
            disk_full: e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull),
            message: e.to_string(),
        }
    }
}

impl CommitError {
    fn to_store_error(&self) -> StoreError {
        if self.disk_full {
            StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("commit failed: {}", self.message),
            ))
        } else {
            StoreError::Corrupt(format!("commit failed: {}", self.message))
        }
    }
}
