//! Essential tasks: the servers now, the replication supervisor later. If one of them fails,
//! panics or ends while the daemon is not shutting down, the daemon does not limp on: the failure
//! is logged once, everything shuts down, and the process exits non-zero so systemd restarts it.
//!
//! All tasks are spawned on one [`TaskTracker`], so shutdown can wait for them to drain.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::error;

/// An essential task failed; it has already been logged.
#[derive(Debug, thiserror::Error)]
#[error("essential task `{task}` failed: {error:#}")]
pub struct EssentialTaskFailed {
    /// The task's name.
    pub task: String,
    /// Why it failed.
    pub error: anyhow::Error,
}

/// Spawns and watches the daemon's tasks.
#[derive(Debug)]
pub struct Supervisor {
    tracker: TaskTracker,
    token: CancellationToken,
    failures_tx: mpsc::UnboundedSender<EssentialTaskFailed>,
    failures_rx: mpsc::UnboundedReceiver<EssentialTaskFailed>,
}

impl Supervisor {
    /// A supervisor whose tasks stop when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        let (failures_tx, failures_rx) = mpsc::unbounded_channel();
        Self {
            tracker: TaskTracker::new(),
            token,
            failures_tx,
            failures_rx,
        }
    }

    /// The token that stops every task.
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// The tracker the tasks run on.
    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Spawns a task that may end whenever it likes.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(task);
    }

    /// Spawns an essential task. It must run until the token is cancelled; an error, a panic or
    /// an early return is reported by [`Supervisor::failed`].
    pub fn spawn_essential<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let name = name.into();
        let handle = self.tracker.spawn(task);
        let token = self.token.clone();
        let failures = self.failures_tx.clone();
        self.tracker.spawn(async move {
            let error = match handle.await {
                Ok(Ok(())) if token.is_cancelled() => return,
                Ok(Ok(())) => anyhow::anyhow!("ended although the daemon is not shutting down"),
                Ok(Err(e)) => e,
                Err(e) if e.is_panic() => {
                    let payload = e.into_panic();
                    let msg = payload
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| payload.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "non-string panic payload".to_owned());
                    anyhow::anyhow!("panicked: {msg}")
                }
                Err(e) => anyhow::anyhow!("was aborted: {e}"),
            };
            // The receiver lives as long as the supervisor; if it is gone, nobody is left to tell.
            let _ = failures.send(EssentialTaskFailed { task: name, error });
        });
    }

    /// Waits for the first essential task to fail, logs it, cancels the token and returns it.
    /// Pending forever if none fails.
    pub async fn failed(&mut self) -> EssentialTaskFailed {
        match self.failures_rx.recv().await {
            Some(failure) => {
                error!(
                    task = %failure.task,
                    error = format!("{:#}", failure.error),
                    "essential task failed; shutting down"
                );
                self.token.cancel();
                failure
            }
            // Cannot happen while `self` holds a sender, but do not spin if it does.
            None => std::future::pending().await,
        }
    }

    /// Stops accepting new tasks and waits for the running ones to end.
    pub async fn drain(&self) {
        self.tracker.close();
        self.tracker.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_failing_task_is_reported_and_cancels_the_rest() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        let t = token.clone();
        sup.spawn_essential("steady", async move {
            t.cancelled().await;
            Ok(())
        });
        sup.spawn_essential("broken", async { Err(anyhow::anyhow!("disk on fire")) });
        let failure = tokio::time::timeout(Duration::from_secs(5), sup.failed())
            .await
            .expect("reported");
        assert_eq!(failure.task, "broken");
        assert!(failure.to_string().contains("disk on fire"));
        assert!(token.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), sup.drain())
            .await
            .expect("drains");
    }

    #[tokio::test]
    async fn a_panic_or_an_early_return_is_a_failure() {
        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn_essential("panicky", async { panic!("boom") });
        let failure = sup.failed().await;
        assert!(failure.to_string().contains("panicked: boom"), "{failure}");

        let mut sup = Supervisor::new(CancellationToken::new());
        sup.spawn_essential("quitter", async { Ok(()) });
        let failure = sup.failed().await;
        assert!(
            failure.to_string().contains("not shutting down"),
            "{failure}"
        );
    }

    #[tokio::test]
    async fn ending_after_cancellation_is_not_a_failure() {
        let token = CancellationToken::new();
        let mut sup = Supervisor::new(token.clone());
        let t = token.clone();
        sup.spawn_essential("server", async move {
            t.cancelled().await;
            Ok(())
        });
        token.cancel();
        sup.drain().await;
        let outcome = tokio::time::timeout(Duration::from_millis(100), sup.failed()).await;
        assert!(outcome.is_err(), "no failure reported");
    }
}
