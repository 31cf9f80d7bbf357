//! A Server-Sent Events parser fed the body in whatever pieces the network delivers.
//!
//! Call [`SseParser::handle_bytes`] with each piece, in order; it pushes the data of every event
//! the piece completes. Lines end with LF, CRLF or CR, and a CR that ends one piece followed by
//! an LF that starts the next is one line ending. An event is the `data:` lines before a blank
//! line, joined by LF (one optional space after the colon is dropped); comments (`:`) and other
//! fields (`event:`, `id:`, `retry:`) are skipped. At the end of the body call
//! [`SseParser::finish`]: unlike the spec, which drops an event the body ended inside, it hands
//! that event over, so a server that omits the last blank line still counts.

/// Longest line or event data accepted, bytes.
pub const MAX_EVENT_BYTES: usize = 1 << 20;

/// Why a body is not a usable event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// A line or an event's data grew past the limit.
    TooLong { limit_bytes: usize },
    /// An event's data was not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for SseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SseError::TooLong { limit_bytes } => {
                write!(f, "an SSE line or event is longer than {limit_bytes} bytes")
            }
            SseError::NotUtf8 => write!(f, "an SSE event's data is not UTF-8"),
        }
    }
}

#[derive(Debug)]
pub struct SseParser {
    /// The line being read, without its ending.
    line: Vec<u8>,
    /// The data lines of the event being read, joined by LF.
    data: Vec<u8>,
    /// Whether the event being read has a `data` field (it may be empty).
    has_data: bool,
    /// The last byte seen was a CR: an LF right after it belongs to the same line ending.
    after_cr: bool,
    limit_bytes: usize,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::with_limit(MAX_EVENT_BYTES)
    }
}

impl SseParser {
    pub fn with_limit(limit_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            after_cr: false,
            limit_bytes,
        }
    }

    /// Takes the next piece of the body; pushes the data of each event it completes to `out`.
    pub fn handle_bytes(
        &mut self,
        mut bytes: &[u8],
        out: &mut Vec<String>,
    ) -> Result<(), SseError> {
        if bytes.is_empty() {
            return Ok(());
        }
        if std::mem::take(&mut self.after_cr) && bytes[0] == b'\n' {
            bytes = &bytes[1..];
        }
        while !bytes.is_empty() {
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                self.extend_line(bytes)?;
                return Ok(());
            };
            self.extend_line(&bytes[..end])?;
            self.end_line(out)?;
            let crlf = bytes[end] == b'\r' && bytes.get(end + 1) == Some(&b'\n');
            if bytes[end] == b'\r' && end + 1 == bytes.len() {
                self.after_cr = true;
            }
            bytes = &bytes[end + if crlf { 2 } else { 1 }..];
        }
        Ok(())
    }

    /// The body ended: hands over the event it ended inside, if any.
    pub fn finish(&mut self, out: &mut Vec<String>) -> Result<(), SseError> {
        if !self.line.is_empty() {
            self.end_line(out)?;
        }
        self.after_cr = false;
        self.dispatch(out)
    }

    fn extend_line(&mut self, bytes: &[u8]) -> Result<(), SseError> {
        if self.line.len() + bytes.len() > self.limit_bytes {
            return Err(SseError::TooLong {
                limit_bytes: self.limit_bytes,
            });
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn end_line(&mut self, out: &mut Vec<String>) -> Result<(), SseError> {
        if self.line.is_empty() {
            return self.dispatch(out);
        }
        let line = std::mem::take(&mut self.line);
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (&line[..], &[][..]),
        };
        // A comment has an empty field name; fields other than `data` carry nothing we use.
        if field == b"data" {
            if self.has_data {
                self.data.push(b'\n');
            }
            if self.data.len() + value.len() > self.limit_bytes {
                return Err(SseError::TooLong {
                    limit_bytes: self.limit_bytes,
                });
            }
            self.data.extend_from_slice(value);
            self.has_data = true;
        }
        // Keep the allocation for the next line.
        self.line = line;
        self.line.clear();
        Ok(())
    }

    fn dispatch(&mut self, out: &mut Vec<String>) -> Result<(), SseError> {
        if !std::mem::take(&mut self.has_data) {
            return Ok(());
        }
        let data = std::mem::take(&mut self.data);
        out.push(String::from_utf8(data).map_err(|_| SseError::NotUtf8)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_pieces(pieces: &[&[u8]]) -> Result<Vec<String>, SseError> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in pieces {
            p.handle_bytes(piece, &mut out)?;
        }
        p.finish(&mut out)?;
        Ok(out)
    }

    const STREAM: &str = ": keep-alive\n\
        data: {\"choices\":[{\"text\":\"a\"}]}\n\n\
        event: message\r\nid: 7\r\ndata:{\"x\":1}\r\n\r\n\
        data: line one\rdata: line two\r\r\
        retry: 100\n\
        data: é€😀\n\n\
        data\n\n\
        data: [DONE]\n\n";

    fn expected() -> Vec<String> {
        [
            "{\"choices\":[{\"text\":\"a\"}]}",
            "{\"x\":1}",
            "line one\nline two",
            "é€😀",
            "",
            "[DONE]",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn whole_stream() {
        assert_eq!(parse_pieces(&[STREAM.as_bytes()]).unwrap(), expected());
    }

    #[test]
    fn split_at_every_byte_into_two_and_three_pieces() {
        let b = STREAM.as_bytes();
        for i in 0..=b.len() {
            assert_eq!(
                parse_pieces(&[&b[..i], &b[i..]]).unwrap(),
                expected(),
                "{i}"
            );
            for j in i..=b.len() {
                assert_eq!(
                    parse_pieces(&[&b[..i], &b[i..j], &b[j..]]).unwrap(),
                    expected(),
                    "{i} {j}"
                );
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let pieces: Vec<&[u8]> = STREAM.as_bytes().chunks(1).collect();
        assert_eq!(parse_pieces(&pieces).unwrap(), expected());
    }

    #[test]
    fn cr_then_lf_in_the_next_piece_is_one_line_ending() {
        // Two endings would make a blank line and dispatch `a` alone.
        let out = parse_pieces(&[b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]).unwrap();
        assert_eq!(out, vec!["a\nb".to_string()]);
        // An empty piece between the CR and the LF does not forget the CR.
        let out = parse_pieces(&[b"data: a\r", b"", b"\ndata: b\n\n"]).unwrap();
        assert_eq!(out, vec!["a\nb".to_string()]);
    }

    #[test]
    fn an_event_the_body_ended_inside_is_handed_over() {
        assert_eq!(
            parse_pieces(&[b"data: [DO", b"NE]"]).unwrap(),
            vec!["[DONE]".to_string()]
        );
        assert_eq!(
            parse_pieces(&[b"data: x\n"]).unwrap(),
            vec!["x".to_string()]
        );
        assert!(parse_pieces(&[b": only a comment"]).unwrap().is_empty());
    }

    #[test]
    fn limits_and_bad_utf8() {
        // A line that grows past the limit over two pieces.
        let mut p = SseParser::with_limit(12);
        let mut out = Vec::new();
        assert_eq!(p.handle_bytes(b"data: 0123", &mut out), Ok(()));
        assert_eq!(
            p.handle_bytes(b"456789", &mut out),
            Err(SseError::TooLong { limit_bytes: 12 })
        );
        // Data that grows past the limit over two lines, each under it.
        let mut p = SseParser::with_limit(8);
        assert_eq!(
            p.handle_bytes(b"data:12345\ndata:6789\n\n", &mut out),
            Err(SseError::TooLong { limit_bytes: 8 })
        );
        let mut p = SseParser::default();
        assert_eq!(
            p.handle_bytes(b"data: \xff\n\n", &mut out),
            Err(SseError::NotUtf8)
        );
        assert!(out.is_empty());
    }
}
