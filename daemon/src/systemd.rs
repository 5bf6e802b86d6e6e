//! systemd integration (`Type=notify`): `READY=1` once the listeners are up, `STOPPING=1` when
//! shutdown begins, `STATUS=` lines for `systemctl status`, and `WATCHDOG=1` every half of
//! `WATCHDOG_USEC` when the unit sets `WatchdogSec=`. Outside systemd (no `NOTIFY_SOCKET`) every
//! call is a no-op.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Tells systemd the daemon is ready, with a status line.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells systemd the daemon is stopping, with a status line.
pub fn stopping(status: &str) {
    notify(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// Updates the status line.
pub fn status(status: &str) {
    notify(&[NotifyState::Status(status)]);
}

/// The interval at which to ping the watchdog, if systemd asked for pings.
pub fn watchdog_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|timeout| timeout / 2)
}

/// Pings the systemd watchdog every `interval` until `token` is cancelled. The pings come from
/// the runtime that serves requests, so a wedged runtime stops them and systemd restarts us.
pub async fn watchdog(interval: Duration, token: CancellationToken) {
    info!(interval = ?interval, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tick.tick() => {
                debug!("watchdog ping");
                notify(&[NotifyState::Watchdog]);
            }
        }
    }
}
