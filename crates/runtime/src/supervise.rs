//! Supervised long-running tasks.
//!
//! Every task that runs for islb's lifetime (the request loop, the expiry timer, the
//! keep-alive batcher, the store maintenance, self-registration...) is spawned through a
//! [`Supervisor`] by name. Such a task only ends when it is told to stop; one that ends
//! before (it returned, or it panicked) is a [`TaskFailure`]: it is recorded in [`Health`],
//! which `/readyz` reads (503 naming the task and why), and handed to whoever waits on
//! [`Supervisor::next_failure`]. islb's answer to a failure is documented where `start`
//! waits on it: it shuts down in order and exits non-zero, for the service manager to
//! restart a clean process.

use std::fmt;
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;

use crate::contain::{Panic, contained};

/// A supervised task that ended before it was told to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskFailure {
    /// The task's name.
    pub task: &'static str,
    /// What happened: `"returned"` or the panic.
    pub reason: String,
}

impl fmt::Display for TaskFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "task {} ended unexpectedly: {}", self.task, self.reason)
    }
}

impl std::error::Error for TaskFailure {}

/// The failures of supervised tasks, shared with whoever reports readiness.
#[derive(Debug, Clone, Default)]
pub struct Health {
    failures: Arc<Mutex<Vec<TaskFailure>>>,
}

impl Health {
    /// One line per failed task (empty while every task runs).
    pub fn problems(&self) -> Vec<String> {
        self.lock().iter().map(ToString::to_string).collect()
    }

    /// Records a failure.
    pub fn report(&self, failure: TaskFailure) {
        self.lock().push(failure);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<TaskFailure>> {
        // A push cannot be left half done: a poisoned list is still whole.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Spawns named tasks and watches them end.
#[derive(Debug)]
pub struct Supervisor {
    tasks: JoinSet<(&'static str, Result<(), Panic>)>,
    health: Health,
}

impl Supervisor {
    /// A supervisor reporting to `health`.
    pub fn new(health: Health) -> Self {
        Supervisor { tasks: JoinSet::new(), health }
    }

    /// Spawns `task` as `name`; a panic inside it is caught and reported, not printed.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(async move { (name, contained(task).await) });
    }

    /// Waits for the next task to end and reports it as a failure (the tasks run until told
    /// to stop, and this is not called once they are). `None` when no task is left.
    pub async fn next_failure(&mut self) -> Option<TaskFailure> {
        let failure = failure_of(self.tasks.join_next().await?);
        tracing::error!(task = failure.task, reason = %failure.reason, "a supervised task ended unexpectedly");
        self.health.report(failure.clone());
        Some(failure)
    }

    /// Waits for every task to end (after they were told to stop); a panic on the way out
    /// is logged.
    pub async fn join_all(&mut self) {
        while let Some(ended) = self.tasks.join_next().await {
            let ended = failure_of(ended);
            if ended.reason != RETURNED {
                tracing::error!(task = ended.task, reason = %ended.reason, "a task failed while stopping");
            }
        }
    }
}

const RETURNED: &str = "returned";

fn failure_of(joined: Result<(&'static str, Result<(), Panic>), tokio::task::JoinError>) -> TaskFailure {
    match joined {
        Ok((task, Ok(()))) => TaskFailure { task, reason: RETURNED.to_owned() },
        Ok((task, Err(panic))) => TaskFailure { task, reason: panic.to_string() },
        // Only a cancelled task gets here (panics are caught inside), and no one cancels.
        Err(e) => TaskFailure { task: "unknown", reason: e.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_ends_early_is_reported_by_name_and_reason() {
        crate::contain::install_hook();
        let health = Health::default();
        let mut sup = Supervisor::new(health.clone());
        sup.spawn("forever", std::future::pending());
        sup.spawn("timer", async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            panic!("the timer broke");
        });
        sup.spawn("feed", async {
            tokio::time::sleep(Duration::from_secs(1)).await;
        });
        assert!(health.problems().is_empty());
        let first = sup.next_failure().await.unwrap();
        assert_eq!(first, TaskFailure { task: "feed", reason: "returned".into() });
        let second = sup.next_failure().await.unwrap();
        assert_eq!(second.task, "timer");
        assert!(second.reason.contains("the timer broke") && second.reason.contains("supervise.rs"), "{second}");
        assert_eq!(
            health.problems(),
            vec!["task feed ended unexpectedly: returned".to_owned(), second.to_string()],
            "readiness sees both"
        );
    }
}
