//! SIGTERM and SIGINT start a graceful shutdown by cancelling the daemon's token. A second signal
//! while draining exits at once: acknowledged writes are already durable on the device log, so
//! nothing committed is lost by not waiting.

use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Installs the handlers and spawns the task that waits for the signals. Call inside the runtime.
pub fn spawn_signal_handler(token: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        info!(
            signal = first,
            "shutting down: no new connections, draining calls in flight, then flushing"
        );
        token.cancel();
        let second = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        warn!(
            signal = second,
            "second signal: exiting now without draining; committed data is safe on the device log"
        );
        std::process::exit(1);
    });
    Ok(())
}
