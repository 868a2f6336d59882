//! hellasd's own recent log lines, kept in memory for the diagnostics bundle: the daemon runs
//! as `hellas`, which may not read the system journal, so it keeps its own share of it.

use std::collections::VecDeque;
use std::io::Write;
use std::sync::Mutex;

/// Lines kept; older ones make way.
const LINES: usize = 2000;

static RECENT: Mutex<VecDeque<String>> = Mutex::new(VecDeque::new());

/// The kept lines, oldest first.
pub fn lines() -> Vec<String> {
    RECENT.lock().unwrap().iter().cloned().collect()
}

/// A tracing writer that writes to stderr (the journal) and keeps each line.
#[derive(Clone, Copy, Default)]
pub struct Tee;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Tee {
    type Writer = Tee;
    fn make_writer(&'a self) -> Tee {
        Tee
    }
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = std::io::stderr().write(buf)?;
        let mut recent = RECENT.lock().unwrap();
        for line in String::from_utf8_lossy(&buf[..written]).lines() {
            if recent.len() == LINES {
                recent.pop_front();
            }
            recent.push_back(line.to_string());
        }
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
