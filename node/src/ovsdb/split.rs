//! Cutting a byte stream into JSON texts.
//!
//! OVSDB (RFC 7047) sends JSON-RPC messages back to back on the stream with
//! no length prefix or delimiter: a reader must find where each JSON text
//! ends. [`JsonSplitter`] does that incrementally, whatever the chunking: it
//! tracks the nesting depth of `{`/`[` and whether it is inside a string
//! (and after a backslash in one), so brackets inside strings do not count.
//! Only objects and arrays are recognised at top level (every OVSDB message
//! is an object): a scalar between texts cannot be delimited and is
//! reported as garbage. Each complete text is parsed with `serde_json`; a
//! text that is not valid JSON is reported and skipped, and the splitter
//! goes on with the next one. Byte-level scanning is safe for UTF-8: every
//! byte of a multi-byte character is >= 0x80, never a bracket or quote.

use serde_json::Value;

/// Why a piece of the stream did not yield a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    /// Bytes outside any object or array that are not whitespace.
    #[error("{len} unexpected byte(s) between JSON texts")]
    Garbage {
        /// How many bytes were skipped.
        len: usize,
    },
    /// A bracketed text that is not valid JSON (e.g. `{"a":}`).
    #[error("invalid JSON text: {0}")]
    Invalid(String),
    /// A text grew past the limit without ending; the splitter dropped what
    /// it had and starts afresh (the stream is best abandoned).
    #[error("JSON text longer than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// An incremental splitter of concatenated JSON texts.
///
/// Feed it bytes with [`push`](JsonSplitter::push), then take values with
/// [`next_value`](JsonSplitter::next_value) until it returns `None`.
#[derive(Debug)]
pub struct JsonSplitter {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out or skipped (dropped on next push).
    consumed: usize,
    /// Next byte of `buf` to scan.
    pos: usize,
    /// Where the text being scanned starts (meaningful when `depth > 0`).
    start: usize,
    depth: usize,
    in_string: bool,
    escaped: bool,
    limit: usize,
}

impl JsonSplitter {
    /// A splitter that refuses texts longer than `limit` bytes.
    pub fn new(limit: usize) -> JsonSplitter {
        JsonSplitter {
            buf: Vec::new(),
            consumed: 0,
            pos: 0,
            start: 0,
            depth: 0,
            in_string: false,
            escaped: false,
            limit: limit.max(2),
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, data: &[u8]) {
        if self.consumed > 0 {
            self.buf.drain(..self.consumed);
            self.pos -= self.consumed;
            self.start = self.start.saturating_sub(self.consumed);
            self.consumed = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes received and not yet handed out (part of an unfinished text).
    pub fn pending_len(&self) -> usize {
        self.buf.len() - self.consumed
    }

    /// The next complete value, an error for a bad piece of the stream, or
    /// `None` when more bytes are needed.
    pub fn next_value(&mut self) -> Option<Result<Value, SplitError>> {
        while self.pos < self.buf.len() {
            let b = self.buf[self.pos];
            if self.depth == 0 {
                match b {
                    b'{' | b'[' => {
                        self.start = self.pos;
                        self.depth = 1;
                        self.in_string = false;
                        self.escaped = false;
                        self.pos += 1;
                    }
                    b' ' | b'\t' | b'\r' | b'\n' => {
                        self.pos += 1;
                        self.consumed = self.pos;
                    }
                    _ => {
                        let from = self.pos;
                        while self.pos < self.buf.len()
                            && !matches!(
                                self.buf[self.pos],
                                b'{' | b'[' | b' ' | b'\t' | b'\r' | b'\n'
                            )
                        {
                            self.pos += 1;
                        }
                        self.consumed = self.pos;
                        return Some(Err(SplitError::Garbage {
                            len: self.pos - from,
                        }));
                    }
                }
                continue;
            }
            self.pos += 1;
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
            } else {
                match b {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        self.depth -= 1;
                        if self.depth == 0 {
                            let text = &self.buf[self.start..self.pos];
                            self.consumed = self.pos;
                            return Some(
                                serde_json::from_slice(text)
                                    .map_err(|e| SplitError::Invalid(e.to_string())),
                            );
                        }
                    }
                    _ => {}
                }
            }
            if self.pos - self.start > self.limit {
                self.depth = 0;
                self.in_string = false;
                self.escaped = false;
                self.consumed = self.pos;
                return Some(Err(SplitError::TooLarge { limit: self.limit }));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut JsonSplitter) -> Vec<Result<Value, SplitError>> {
        std::iter::from_fn(|| s.next_value()).collect()
    }

    #[test]
    fn strings_hide_brackets_and_escaped_quotes() {
        let mut s = JsonSplitter::new(1 << 20);
        s.push(br#"{"a":"}\"{["} [1,"]"]"#);
        let got = all(&mut s);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0], Ok(serde_json::json!({"a": "}\"{["})));
        assert_eq!(got[1], Ok(serde_json::json!([1, "]"])));
    }

    #[test]
    fn too_large_resets() {
        let mut s = JsonSplitter::new(8);
        s.push(b"[1,2,3,4,5,6,7,8,9]");
        assert_eq!(s.next_value(), Some(Err(SplitError::TooLarge { limit: 8 })));
    }
}
