//! The `application/vnd.amazon.eventstream` framing of ConverseStream, decoded.
//!
//! A message is: a 12-byte prelude (total length, headers length — both big-endian u32 —
//! and the CRC32 of those 8 bytes), the headers, the payload, and the CRC32 of everything
//! before it. A header is a 1-byte name length, the name, a 1-byte value type and the value
//! (types 0–9: true, false, byte, short, int, long, bytes, string, timestamp, uuid). Only
//! string headers are kept (`:message-type`, `:event-type`, `:exception-type`, …); other
//! values are skipped by their size. A bad CRC or a length that does not add up is a
//! [`Class::BadResponse`]; a body that ends inside a message is a [`Class::Reset`].

use std::collections::HashMap;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, stream};
use http_body_util::BodyExt;

use super::super::Failure;
use crate::class::Class;

/// Largest message accepted (the service's own limit is 16 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;
const PRELUDE: usize = 12;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: HashMap<String, String>,
    pub payload: Bytes,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn bad(detail: &'static str) -> Failure {
    Failure::new(Class::BadResponse, detail)
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn parse_headers(mut h: &[u8]) -> Result<HashMap<String, String>, Failure> {
    let mut out = HashMap::new();
    while !h.is_empty() {
        let name_len = usize::from(h[0]);
        let name = h
            .get(1..1 + name_len)
            .ok_or_else(|| bad("event-stream header name truncated"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        h = &h[1 + name_len..];
        let (&kind, rest) = h
            .split_first()
            .ok_or_else(|| bad("event-stream header type missing"))?;
        h = rest;
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(bad("event-stream header of unknown type")),
        };
        if let Some(n) = fixed {
            if h.len() < n {
                return Err(bad("event-stream header value truncated"));
            }
            h = &h[n..];
            continue;
        }
        let len = h
            .get(..2)
            .map(|s| usize::from(u16::from_be_bytes([s[0], s[1]])))
            .ok_or_else(|| bad("event-stream header length missing"))?;
        let value = h
            .get(2..2 + len)
            .ok_or_else(|| bad("event-stream header value truncated"))?;
        if kind == 7 {
            out.insert(name, String::from_utf8_lossy(value).into_owned());
        }
        h = &h[2 + len..];
    }
    Ok(out)
}

/// Takes one complete message off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, Failure> {
    if buf.len() < PRELUDE {
        return Ok(None);
    }
    let (Some(total), Some(headers_len), Some(prelude_crc)) =
        (be_u32(buf, 0), be_u32(buf, 4), be_u32(buf, 8))
    else {
        return Ok(None);
    };
    if crc32fast::hash(&buf[..8]) != prelude_crc {
        return Err(bad("event-stream prelude CRC mismatch"));
    }
    let total = usize::try_from(total).map_err(|_| bad("event-stream message too large"))?;
    let headers_len = usize::try_from(headers_len).map_err(|_| bad("event-stream headers too large"))?;
    if total > MAX_MESSAGE {
        return Err(bad("event-stream message too large"));
    }
    if total < PRELUDE + 4 + headers_len {
        return Err(bad("event-stream lengths do not add up"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let msg = buf.split_to(total);
    let crc = be_u32(&msg, total - 4).ok_or_else(|| bad("event-stream message CRC missing"))?;
    if crc32fast::hash(&msg[..total - 4]) != crc {
        return Err(bad("event-stream message CRC mismatch"));
    }
    let headers = parse_headers(&msg[PRELUDE..PRELUDE + headers_len])?;
    let payload = Bytes::copy_from_slice(&msg[PRELUDE + headers_len..total - 4]);
    Ok(Some(Message { headers, payload }))
}

/// Decodes a streaming body into messages.
pub fn messages<B>(body: B) -> impl Stream<Item = Result<Message, Failure>> + Send + Unpin + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    struct St<B> {
        body: B,
        buf: BytesMut,
        done: bool,
    }
    let st = St {
        body,
        buf: BytesMut::new(),
        done: false,
    };
    Box::pin(stream::unfold(st, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            match decode(&mut st.buf) {
                Err(f) => {
                    st.done = true;
                    return Some((Err(f), st));
                }
                Ok(Some(m)) => return Some((Ok(m), st)),
                Ok(None) => {}
            }
            match st.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        st.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    st.done = true;
                    tracing::debug!(error = %e, "bedrock stream broke");
                    return Some((Err(Failure::new(Class::Reset, "upstream stream broke")), st));
                }
                None => {
                    st.done = true;
                    if st.buf.has_remaining() {
                        return Some((
                            Err(Failure::new(
                                Class::Reset,
                                "upstream stream ended inside a message",
                            )),
                            st,
                        ));
                    }
                    return None;
                }
            }
        }
    }))
}

/// Encodes a message with string headers (tests, and the fakes that speak this format).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&u16::try_from(value.len()).unwrap_or(u16::MAX).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = PRELUDE + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&u32::try_from(total).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(&u32::try_from(h.len()).unwrap_or(u32::MAX).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use http_body_util::StreamBody;
    use hyper::body::Frame;

    fn event(kind: &str, payload: &str) -> Vec<u8> {
        encode(
            &[
                (":message-type", "event"),
                (":event-type", kind),
                (":content-type", "application/json"),
            ],
            payload.as_bytes(),
        )
    }

    /// Messages split at every byte boundary are reassembled, with their string headers.
    #[tokio::test]
    async fn decodes_across_chunk_boundaries() {
        let mut bytes = event("messageStart", r#"{"role":"assistant"}"#);
        bytes.extend(event(
            "contentBlockDelta",
            r#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#,
        ));
        let frames: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = bytes
            .chunks(1)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let got: Vec<_> = messages(StreamBody::new(stream::iter(frames))).collect().await;
        assert_eq!(got.len(), 2);
        let m = got[1].as_ref().unwrap();
        assert_eq!(m.header(":event-type"), Some("contentBlockDelta"));
        assert_eq!(
            &m.payload[..],
            br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#
        );
    }

    /// Non-string headers are skipped by their size; the string ones still parse.
    #[test]
    fn skips_other_header_types() {
        let mut h = vec![3, b'a', b'b', b'c', 4, 0, 0, 0, 9, 2, b'x', b'y', 0];
        h.extend([1, b'k', 7, 0, 1, b'v']);
        let got = parse_headers(&h).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got.get("k").map(String::as_str), Some("v"));
    }

    /// A corrupted byte fails the CRC; a truncated prelude waits for more.
    #[test]
    fn rejects_bad_crc() {
        let mut bytes = event("messageStop", r#"{"stopReason":"end_turn"}"#);
        let mut partial = BytesMut::from(&bytes[..10]);
        assert_eq!(decode(&mut partial).unwrap(), None);
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        let err = decode(&mut BytesMut::from(&bytes[..])).unwrap_err();
        assert_eq!(err.class, Class::BadResponse);
        let mut prelude_bad = event("x", "{}");
        prelude_bad[9] ^= 1;
        assert!(decode(&mut BytesMut::from(&prelude_bad[..])).is_err());
    }

    /// Arbitrary bytes — random, and valid messages with random corruption — never panic the
    /// decoder: each is a message, "need more", or a classified failure.
    #[test]
    fn garbage_never_panics() {
        let mut rng = fastrand::Rng::with_seed(7);
        let valid = event("contentBlockDelta", r#"{"delta":{"text":"x"}}"#);
        for _ in 0..5000 {
            let mut bytes: Vec<u8> = if rng.bool() {
                (0..rng.usize(0..64)).map(|_| rng.u8(..)).collect()
            } else {
                let mut v = valid.clone();
                let i = rng.usize(0..v.len());
                v[i] = rng.u8(..);
                v.truncate(rng.usize(0..=v.len()));
                v
            };
            if rng.bool() && bytes.len() >= 12 {
                // Make the prelude CRC right so the headers parser sees the garbage.
                let crc = crc32fast::hash(&bytes[..8]).to_be_bytes();
                bytes[8..12].copy_from_slice(&crc);
            }
            let _ = decode(&mut BytesMut::from(&bytes[..]));
            let _ = parse_headers(&bytes);
        }
    }
}
