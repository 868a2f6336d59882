//! Splitting a byte stream into lines as it arrives in pieces: an engine's log, a server-sent
//! event stream.

/// What a stream has sent after its last complete line.
#[derive(Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    /// Calls `on_line` with each line `chunk` completes, without its `\n` or `\r\n`.
    pub fn feed(&mut self, chunk: &[u8], mut on_line: impl FnMut(&[u8])) {
        self.pending.extend_from_slice(chunk);
        let mut start = 0;
        while let Some(end) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + end];
            on_line(line.strip_suffix(b"\r").unwrap_or(line));
            start += end + 1;
        }
        self.pending.drain(..start);
    }

    /// At the end of the stream: calls `on_line` with what followed the last line break, if
    /// anything did.
    pub fn finish(&mut self, mut on_line: impl FnMut(&[u8])) {
        if !self.pending.is_empty() {
            on_line(&self.pending);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_pieces_and_the_last_one_without_a_break() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        for piece in ["0.01 I ", "one\r\n0.02 W two\n0.0", "3 E thr", "ee"] {
            lines.feed(piece.as_bytes(), |l| seen.push(String::from_utf8_lossy(l).into_owned()));
        }
        assert_eq!(seen, ["0.01 I one", "0.02 W two"]);
        lines.finish(|l| seen.push(String::from_utf8_lossy(l).into_owned()));
        assert_eq!(seen, ["0.01 I one", "0.02 W two", "0.03 E three"]);
        lines.finish(|_| panic!("nothing is left"));
    }
}
