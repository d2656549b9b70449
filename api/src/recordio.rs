//! RecordIO framing, as Mesos's streaming APIs use it (`docs/recordio.md`): each record is
//! its length in bytes as ASCII decimal, a newline, then the record bytes.
//!
//! [`Decoder`] is incremental: feed it chunks as they arrive off a stream and it yields whole
//! records. It bounds the record size so a hostile or broken peer cannot make it buffer without
//! limit.

/// Frames one record.
pub fn encode(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 8);
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record);
    out
}

/// Why a RecordIO stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordIoError {
    #[error("recordio: record length header {0:?} is not a decimal number")]
    BadHeader(String),
    #[error("recordio: record of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

/// Incremental RecordIO decoder.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    max_record: usize,
}

impl Decoder {
    /// A decoder that rejects records larger than `max_record` bytes.
    pub fn new(max_record: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_record,
        }
    }

    /// Appends `chunk` and returns every record now complete.
    ///
    /// # Errors
    /// A malformed length header or a record over the limit; the stream is then unusable.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<Vec<Vec<u8>>, RecordIoError> {
        self.buf.extend_from_slice(chunk);
        let mut records = Vec::new();
        let mut start = 0;
        loop {
            let rest = &self.buf[start..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                // A header longer than 20 digits cannot be a valid length.
                if rest.len() > 20 {
                    return Err(RecordIoError::BadHeader(
                        String::from_utf8_lossy(rest).into(),
                    ));
                }
                break;
            };
            let header = &rest[..nl];
            let text = std::str::from_utf8(header).unwrap_or("");
            let size: usize = text
                .parse()
                .map_err(|_| RecordIoError::BadHeader(String::from_utf8_lossy(header).into()))?;
            if size > self.max_record {
                return Err(RecordIoError::TooLarge {
                    size,
                    limit: self.max_record,
                });
            }
            if rest.len() < nl + 1 + size {
                break;
            }
            records.push(rest[nl + 1..nl + 1 + size].to_vec());
            start += nl + 1 + size;
        }
        self.buf.drain(..start);
        Ok(records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_records_split_anywhere() {
        let mut stream = Vec::new();
        let records: Vec<&[u8]> = vec![b"{\"type\":\"HEARTBEAT\"}", b"", b"x\ny"];
        for r in &records {
            stream.extend(encode(r));
        }
        for split in 0..stream.len() {
            let mut d = Decoder::new(1024);
            let mut got = d.feed(&stream[..split]).unwrap();
            got.extend(d.feed(&stream[split..]).unwrap());
            assert_eq!(got, records, "split at {split}");
        }
    }

    #[test]
    fn rejects_bad_headers_and_oversized_records() {
        assert!(matches!(
            Decoder::new(10).feed(b"abc\n"),
            Err(RecordIoError::BadHeader(_))
        ));
        assert_eq!(
            Decoder::new(10).feed(b"11\n"),
            Err(RecordIoError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        assert!(Decoder::new(10).feed(&[b'1'; 30]).is_err());
    }
}
