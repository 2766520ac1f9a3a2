//! A Server-Sent Events decoder over a byte stream.
//!
//! The network cuts a stream into chunks anywhere: inside a line, inside an
//! event, or inside a multi-byte UTF-8 character. The decoder therefore
//! buffers *bytes* and decodes only whole lines: a line ends at `\n`, `\r\n`
//! or `\r` (the SSE grammar), and none of those bytes can occur inside a
//! multi-byte character, so a complete line is complete UTF-8 text. Bytes
//! that are not UTF-8 at all become U+FFFD, as the SSE specification says.
//!
//! Fields follow the specification: `data` lines are joined with `\n`, one
//! space after the colon is dropped, `:` lines are comments (keep-alives),
//! `retry` is ignored, and an event is dispatched at an empty line only if
//! it carried data.

/// One dispatched event.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The `event` field (`None` for the default `message`).
    pub(crate) event: Option<String>,
    /// The `id` field of this event, if it had one.
    pub(crate) id: Option<String>,
    /// The `data` lines, joined with `\n`.
    pub(crate) data: String,
}

/// Turns chunks of bytes into [`Frame`]s.
#[derive(Debug, Default)]
pub(crate) struct Decoder {
    /// Bytes of the line not yet ended.
    pending: Vec<u8>,
    /// The event being assembled.
    frame: Frame,
    /// Whether a `data` field was seen for `frame`.
    has_data: bool,
}

impl Decoder {
    /// Feeds the next chunk; returns the events it completed, in order.
    pub(crate) fn push(&mut self, chunk: &[u8]) -> Vec<Frame> {
        self.pending.extend_from_slice(chunk);
        let mut frames = Vec::new();
        let mut start = 0;
        while let Some(relative) = self.pending[start..]
            .iter()
            .position(|byte| matches!(byte, b'\n' | b'\r'))
        {
            let end = start + relative;
            let next = match self.pending[end] {
                // A CR at the end of what we have may be the first half of
                // a CRLF split across chunks: wait for the next byte.
                b'\r' if end + 1 == self.pending.len() => break,
                b'\r' if self.pending[end + 1] == b'\n' => end + 2,
                _ => end + 1,
            };
            let line = String::from_utf8_lossy(&self.pending[start..end]).into_owned();
            if let Some(frame) = self.line(&line) {
                frames.push(frame);
            }
            start = next;
        }
        self.pending.drain(..start);
        frames
    }

    fn line(&mut self, line: &str) -> Option<Frame> {
        if line.is_empty() {
            let frame = std::mem::take(&mut self.frame);
            return std::mem::take(&mut self.has_data).then_some(frame);
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.frame.data.push('\n');
                }
                self.frame.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.frame.event = Some(value.to_owned()),
            "id" if !value.contains('\0') => self.frame.id = Some(value.to_owned()),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = ": keep-alive\n\nid: 0:1\ndata: {\"data\":\"h\u{e9}llo \u{1f600} \u{65e5}\u{672c}\"}\n\nevent: error\r\ndata: a\r\ndata: b\r\n\r\n";

    fn expected() -> Vec<Frame> {
        vec![
            Frame {
                event: None,
                id: Some("0:1".into()),
                data: "{\"data\":\"h\u{e9}llo \u{1f600} \u{65e5}\u{672c}\"}".into(),
            },
            Frame {
                event: Some("error".into()),
                id: None,
                data: "a\nb".into(),
            },
        ]
    }

    #[test]
    fn given_chunks_split_at_every_byte_when_decoded_should_keep_multibyte_text_whole() {
        let bytes = STREAM.as_bytes();
        // Every split point: inside the 2-, 3- and 4-byte characters, inside
        // lines, between CR and LF.
        for split in 0..=bytes.len() {
            let mut decoder = Decoder::default();
            let mut frames = decoder.push(&bytes[..split]);
            frames.extend(decoder.push(&bytes[split..]));
            assert_eq!(frames, expected(), "split at byte {split}");
        }
        let mut decoder = Decoder::default();
        let frames: Vec<Frame> = bytes
            .iter()
            .flat_map(|byte| decoder.push(std::slice::from_ref(byte)))
            .collect();
        assert_eq!(frames, expected(), "one byte at a time");
        assert!(!frames[0].data.contains('\u{fffd}'));
    }

    #[test]
    fn given_an_event_without_data_when_ended_should_not_dispatch() {
        let mut decoder = Decoder::default();
        assert!(decoder.push(b"id: 5\n\n").is_empty());
        assert_eq!(
            decoder.push(b"data\n\n"),
            vec![Frame {
                data: String::new(),
                ..Frame::default()
            }]
        );
    }
}
