//! Progress on stderr: a count, the total when it is known, and the rate. On a terminal one line
//! is rewritten; otherwise a line is printed at most every few seconds.

use std::{
    io::{IsTerminal, Write},
    time::{Duration, Instant},
};

pub struct Progress {
    label: &'static str,
    started: Instant,
    printed: Option<Instant>,
    terminal: bool,
}

impl Progress {
    pub fn new(label: &'static str) -> Self {
        Self { label, started: Instant::now(), printed: None, terminal: std::io::stderr().is_terminal() }
    }

    /// Reports `done` (of `total`), unless a line went out a moment ago.
    pub fn update(&mut self, done: usize, total: Option<usize>) {
        let every = if self.terminal { Duration::from_millis(200) } else { Duration::from_secs(5) };
        if self.printed.is_some_and(|printed| printed.elapsed() < every) {
            return;
        }
        self.printed = Some(Instant::now());
        self.print(done, total, false);
    }

    /// Reports the final count.
    pub fn finish(&mut self, done: usize) {
        self.print(done, Some(done), true);
    }

    fn print(&self, done: usize, total: Option<usize>, last: bool) {
        let text = line(self.label, done, total, self.started.elapsed());
        let mut stderr = std::io::stderr().lock();
        let _ = match (self.terminal, last) {
            (true, false) => write!(stderr, "\r{text}\x1b[K"),
            (true, true) => writeln!(stderr, "\r{text}\x1b[K"),
            (false, _) => writeln!(stderr, "{text}"),
        };
    }
}

/// `listing enrollments: 2300 of 10000 (460/s)`.
pub fn line(label: &str, done: usize, total: Option<usize>, elapsed: Duration) -> String {
    let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
    match total {
        Some(total) => format!("{label}: {done} of {total} ({rate:.0}/s)"),
        None => format!("{label}: {done} ({rate:.0}/s)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_count_the_total_when_known_and_the_rate() {
        assert_eq!(
            line("reading keys", 50, Some(200), Duration::from_secs(5)),
            "reading keys: 50 of 200 (10/s)"
        );
        assert_eq!(line("listing", 300, None, Duration::from_secs(2)), "listing: 300 (150/s)");
    }
}
