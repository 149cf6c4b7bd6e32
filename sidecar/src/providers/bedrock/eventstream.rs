//! The `application/vnd.amazon.eventstream` framing of ConverseStream, decoded by the AWS
//! SDK's own `aws-smithy-eventstream`.
//!
//! A message is: a 12-byte prelude (total length, headers length — both big-endian u32 —
//! and the CRC32 of those 8 bytes), the headers, the payload, and the CRC32 of everything
//! before it. Here: the prelude's CRC is checked as soon as it arrives (garbage fails at once
//! instead of after the length it declares), no message above [`MAX_MESSAGE`] is waited for,
//! and a complete message is handed to the crate, which checks lengths, headers and CRCs.
//! Only string headers are kept (`:message-type`, `:event-type`, `:exception-type`, …). A
//! message the crate refuses is a [`Class::BadResponse`]; a body that ends inside a message
//! is a [`Class::Reset`].

use std::collections::HashMap;

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{Header, HeaderValue, Message as Wire};
use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, stream};

use super::super::Failure;
use crate::class::Class;

/// Largest message accepted (the service's own limit is 16 MiB).
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

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
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

/// Takes one complete message off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, Failure> {
    let (Some(total), Some(prelude_crc), Some(prelude)) = (be_u32(buf, 0), be_u32(buf, 8), buf.get(..8))
    else {
        return Ok(None);
    };
    if crc32fast::hash(prelude) != prelude_crc {
        return Err(bad("event-stream prelude CRC mismatch"));
    }
    let total = usize::try_from(total).map_err(|_| bad("event-stream message too large"))?;
    if total > MAX_MESSAGE {
        return Err(bad("event-stream message too large"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let frame = read_message_from(buf.split_to(total).freeze()).map_err(|e| {
        tracing::debug!(error = %e, "bedrock event-stream message refused");
        bad("event-stream message malformed (lengths, headers or CRC)")
    })?;
    let headers = frame
        .headers()
        .iter()
        .filter_map(|h| match h.value() {
            HeaderValue::String(v) => Some((h.name().as_str().to_owned(), v.as_str().to_owned())),
            _ => None,
        })
        .collect();
    Ok(Some(Message {
        headers,
        payload: frame.payload().clone(),
    }))
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
            match super::super::sse::read_more(&mut st.body, &mut st.buf).await {
                Ok(true) => {}
                Err(f) => {
                    st.done = true;
                    return Some((Err(f), st));
                }
                Ok(false) => {
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
    let frame = Wire::new_from_parts(
        headers
            .iter()
            .map(|(name, value)| Header::new(name.to_string(), HeaderValue::String(value.to_string().into())))
            .collect(),
        Bytes::copy_from_slice(payload),
    );
    let mut out = Vec::new();
    if let Err(e) = write_message_to(&frame, &mut out) {
        tracing::debug!(error = %e, "event-stream message not encodable");
        out.clear();
    }
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

    /// Headers of other types are read past; the string ones are kept.
    #[test]
    fn keeps_only_string_headers() {
        let frame = Wire::new(&b"{}"[..])
            .add_header(Header::new("abc", HeaderValue::Int32(9)))
            .add_header(Header::new("flag", HeaderValue::Bool(true)))
            .add_header(Header::new("k", HeaderValue::String("v".into())))
            .add_header(Header::new("id", HeaderValue::Uuid(7)));
        let mut bytes = Vec::new();
        write_message_to(&frame, &mut bytes).unwrap();
        let got = decode(&mut BytesMut::from(&bytes[..])).unwrap().unwrap();
        assert_eq!(got.headers.len(), 1);
        assert_eq!(got.header("k"), Some("v"));
        assert_eq!(&got.payload[..], b"{}");
    }

    /// A prelude declaring more than the service's limit fails at once, without waiting for
    /// (or buffering) what it declares.
    #[test]
    fn refuses_oversized_messages_from_the_prelude() {
        let mut prelude = (u32::try_from(MAX_MESSAGE).unwrap() + 1).to_be_bytes().to_vec();
        prelude.extend(0u32.to_be_bytes());
        let crc = crc32fast::hash(&prelude).to_be_bytes();
        prelude.extend(crc);
        let err = decode(&mut BytesMut::from(&prelude[..])).unwrap_err();
        assert_eq!(err.class, Class::BadResponse);
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
        }
    }
}
