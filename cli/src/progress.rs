//! Progress display for long work (import, export; wait-sync draws its own bar): an indicatif bar with
//! bytes, rate and ETA when stderr is a terminal, a plain line every [`LINE_INTERVAL`]
//! otherwise (logs and CI stay readable), nothing with `--quiet`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain progress line is printed when stderr is not a terminal.
pub const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A live bar on the terminal.
    Bar,
    /// A line every [`LINE_INTERVAL`].
    Lines,
    /// Nothing.
    Off,
}

impl Mode {
    /// A bar on a terminal, lines otherwise, nothing when quiet.
    pub fn detect(quiet: bool) -> Mode {
        if quiet {
            Mode::Off
        } else if std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Lines
        }
    }
}

/// A progress display in bytes. Cheap to update on every chunk.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    bar: ProgressBar,
    label: &'static str,
    started: Instant,
    last_line: Mutex<Instant>,
}

fn style(total_known: bool) -> ProgressStyle {
    let template = if total_known {
        "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} \
         {binary_bytes_per_sec} ETA {eta} {msg}"
    } else {
        "{spinner} {prefix} [{elapsed_precise}] {bytes} {binary_bytes_per_sec} {msg}"
    };
    ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar())
}

impl Progress {
    /// A display labelled `label` (`import`, `export`) of `total` bytes, if known.
    pub fn new(mode: Mode, label: &'static str, total: Option<u64>) -> Progress {
        let bar = match mode {
            Mode::Bar => {
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr());
                bar.set_style(style(total.is_some()));
                bar.set_prefix(label);
                bar.enable_steady_tick(Duration::from_millis(200));
                bar
            }
            Mode::Lines | Mode::Off => ProgressBar::hidden(),
        };
        let now = Instant::now();
        Progress {
            mode,
            bar,
            label,
            started: now,
            last_line: Mutex::new(now),
        }
    }

    /// The display mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Sets the total once it is known (for example when a scan of the input ends).
    pub fn set_total(&self, total: u64) {
        if self.mode == Mode::Bar {
            self.bar.set_length(total);
            self.bar.set_style(style(true));
        }
    }

    /// Sets the bytes done, and the text beside the bar; `line` builds the plain line, called
    /// only when one is due.
    pub fn update(&self, done: u64, msg: impl FnOnce() -> String) {
        match self.mode {
            Mode::Bar => {
                self.bar.set_position(done);
                self.bar.set_message(msg());
            }
            Mode::Lines => {
                let now = Instant::now();
                let due = match self.last_line.lock() {
                    Ok(mut last) if now.duration_since(*last) >= LINE_INTERVAL => {
                        *last = now;
                        true
                    }
                    _ => false,
                };
                if due {
                    let elapsed = now.duration_since(self.started);
                    eprintln!(
                        "{}: {} in {} ({}) {}",
                        self.label,
                        crate::output::bytes(done),
                        crate::output::duration(elapsed),
                        crate::output::rate(done, elapsed),
                        msg()
                    );
                }
            }
            Mode::Off => {}
        }
    }

    /// Prints a warning without breaking the bar.
    pub fn warn(&self, msg: &str) {
        self.bar.suspend(|| eprintln!("replctl: warning: {msg}"));
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }

    /// Time since the display was created.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.bar.finish_and_clear();
    }
}
