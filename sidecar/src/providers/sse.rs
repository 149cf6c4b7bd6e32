//! The one SSE reader of OpenAI-shaped streams: frames upstream bytes into events without
//! buffering more than one event, and turns `data:` payloads into [`Event`]s.
//!
//! Upstream body errors become [`Class::Reset`]; an `{"error": ...}` event becomes
//! [`Class::ServerError`] (before the first byte that fails over; after it, the proxy ends the
//! stream with an error event). An event whose data is not a JSON object is not a failure of
//! a pass-through stream: it becomes [`Event::Opaque`], forwarded to the client as it came and
//! counted as an anomaly (several OpenAI-compatible servers send such events, and their
//! clients cope with them).

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{Stream, StreamExt, stream};
use http_body_util::BodyExt;
use serde_json::Value;

use super::{Event, EventStream, Failure, OpenAiJson};
use crate::class::Class;

/// Largest single event accepted from an upstream.
const MAX_EVENT: usize = 4 * 1024 * 1024;

/// Finds the end of the first complete event in `buf` — the first `\n\n` or `\r\n\r\n` —
/// as (end of event, length of separator). Jumps from newline to newline.
fn event_end(buf: &[u8]) -> Option<(usize, usize)> {
    memchr::memchr_iter(b'\n', buf).find_map(|j| {
        let next = buf.get(j + 1);
        if j >= 1 && buf.get(j - 1) == Some(&b'\r') && next == Some(&b'\r') && buf.get(j + 2) == Some(&b'\n')
        {
            Some((j - 1, 4))
        } else if next == Some(&b'\n') {
            Some((j, 2))
        } else {
            None
        }
    })
}

/// The joined `data:` lines of one raw event; `None` for comments and events without data.
fn data_of(raw: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(raw);
    let mut data = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            if !data.is_empty() {
                data.push('\n');
            }
            data.push_str(rest.strip_prefix(' ').unwrap_or(rest));
        }
    }
    (!data.is_empty()).then_some(data)
}

fn not_json() -> Failure {
    Failure::new(Class::BadResponse, "upstream sent an SSE event that is not JSON")
}

/// The payload of an event that is a single `data:` line — what providers send — as a slice
/// of the event, without copying.
fn single_data_line(raw: &Bytes) -> Option<Bytes> {
    let rest = raw.strip_prefix(b"data:")?;
    if rest.contains(&b'\n') || rest.contains(&b'\r') {
        return None;
    }
    let skip = raw.len() - rest.len() + usize::from(rest.first() == Some(&b' '));
    Some(raw.slice(skip..))
}

/// Parses one OpenAI-shaped event into an [`Event`]; `None` for comments and events without
/// data; [`Event::Opaque`] for data that is not a JSON object.
pub fn parse_event(raw: Bytes) -> Option<Result<Event, Failure>> {
    // The common shape, read in place; anything else (and any payload that does not read as
    // an answer, to get the same verdict as below) takes the general path.
    if let Some(payload) = single_data_line(&raw) {
        if payload.is_empty() {
            return None;
        }
        if payload.trim_ascii() == b"[DONE]" {
            return Some(Ok(Event::Done));
        }
        if let Some(a) = OpenAiJson::parse(payload) {
            return Some(answer_event(a));
        }
    }
    parse_event_general(&raw)
}

/// An answer read from an event: an error event is a failure.
fn answer_event(a: OpenAiJson) -> Result<Event, Failure> {
    if a.is_error() {
        Err(Failure::new(Class::ServerError, "upstream sent an error event"))
    } else {
        Ok(Event::Raw(a))
    }
}

/// The general reading of an event: its `data:` lines joined.
fn parse_event_general(raw: &Bytes) -> Option<Result<Event, Failure>> {
    let data = data_of(raw)?;
    if data.trim() == "[DONE]" {
        return Some(Ok(Event::Done));
    }
    // Data split over several `data:` lines holds newlines; the client gets it on one line.
    let answer = if data.contains(['\n', '\r']) {
        serde_json::from_str::<Value>(&data)
            .ok()
            .filter(Value::is_object)
            .map(|v| OpenAiJson::from_value(&v))
    } else {
        OpenAiJson::parse(Bytes::from(data))
    };
    Some(answer.map_or_else(|| Ok(Event::Opaque(raw.clone())), answer_event))
}

/// Parses one event's data as JSON without interpreting it, for providers whose events mean
/// something else than OpenAI's (Anthropic's `error` events, say).
pub fn parse_json(raw: Bytes) -> Option<Result<Value, Failure>> {
    data_of(&raw).map(|data| serde_json::from_str::<Value>(&data).map_err(|_| not_json()))
}

/// Turns a streaming upstream body into OpenAI events.
pub fn events<B>(body: B) -> EventStream
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
{
    Box::pin(frames(body, parse_event))
}

/// Reads the next frame of a streaming upstream body into `buf`: `Ok(true)` when there may be
/// more, `Ok(false)` at the body's end, a reset when the body broke. Shared by the framers of
/// SSE and of Bedrock's event stream.
pub(crate) async fn read_more<B>(body: &mut B, buf: &mut BytesMut) -> Result<bool, Failure>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    match body.frame().await {
        Some(Ok(frame)) => {
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
            }
            Ok(true)
        }
        Some(Err(e)) => {
            tracing::debug!(error = %e, "upstream stream broke");
            Err(Failure::new(Class::Reset, "upstream stream broke"))
        }
        None => Ok(false),
    }
}

/// The one SSE framer: splits a streaming body into events (blank-line separated, `\n\n` or
/// `\r\n\r\n`) and hands each to `parse`, which says what it is (`None`: skip it). Never
/// buffers more than one event ([`MAX_EVENT`]), scans each byte for a separator once, and
/// ends after the first failure.
pub fn frames<B, T, P>(body: B, parse: P) -> impl Stream<Item = Result<T, Failure>> + Send + Unpin + 'static
where
    B: hyper::body::Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: std::fmt::Display,
    T: Send + 'static,
    P: Fn(Bytes) -> Option<Result<T, Failure>> + Send + Copy + 'static,
{
    struct State<B> {
        body: B,
        buf: BytesMut,
        /// How much of `buf` is known to hold no separator, so each frame is scanned once
        /// (a slow upstream sending one byte at a time must not cost quadratic time).
        scanned: usize,
        done: bool,
    }
    let state = State {
        body,
        buf: BytesMut::new(),
        scanned: 0,
        done: false,
    };
    let s = stream::unfold(state, move |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            // A separator may straddle the old end of the buffer: back up 3 bytes.
            let from = st.scanned.saturating_sub(3);
            let found = st
                .buf
                .get(from..)
                .and_then(event_end)
                .map(|(end, sep)| (from + end, sep));
            st.scanned = st.buf.len();
            if let Some((end, sep)) = found {
                let raw = st.buf.split_to(end);
                st.buf.advance(sep);
                st.scanned = 0;
                match parse(raw.freeze()) {
                    Some(Err(f)) => {
                        st.done = true;
                        return Some((Err(f), st));
                    }
                    Some(Ok(ev)) => return Some((Ok(ev), st)),
                    None => continue,
                }
            }
            if st.buf.len() > MAX_EVENT {
                st.done = true;
                return Some((
                    Err(Failure::new(Class::BadResponse, "upstream SSE event too large")),
                    st,
                ));
            }
            match read_more(&mut st.body, &mut st.buf).await {
                Ok(true) => {}
                Err(f) => {
                    st.done = true;
                    return Some((Err(f), st));
                }
                Ok(false) => {
                    st.done = true;
                    // A last event without its blank line still counts.
                    let rest = std::mem::take(&mut st.buf);
                    return parse(rest.freeze()).map(|ev| (ev, st));
                }
            }
        }
    });
    Box::pin(s)
}

/// One `data:` event holding `answer` with its `model` replaced (see
/// [`OpenAiJson::with_model`]), built in one buffer.
pub fn encode_answer(answer: &OpenAiJson, model: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(answer.bytes().len() + 64);
    out.extend_from_slice(b"data: ");
    answer.write_with_model(model, &mut out);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

/// Serialises an event for the client.
pub fn encode(event: &Event) -> Bytes {
    match event {
        Event::Done => Bytes::from_static(b"data: [DONE]\n\n"),
        Event::Raw(a) => encode_answer(a, None),
        Event::Opaque(raw) | Event::Native(crate::responses::native::NativeEvent { raw, .. }) => {
            let mut out = Vec::with_capacity(raw.len() + 2);
            out.extend_from_slice(raw);
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        }
        Event::Data(v) => {
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(b"data: ");
            if serde_json::to_writer(&mut out, v).is_err() {
                out.truncate(6);
                out.extend_from_slice(b"{}");
            }
            out.extend_from_slice(b"\n\n");
            Bytes::from(out)
        }
    }
}

/// A stream of already-built events (mock provider, tests).
pub fn from_events<S>(s: S) -> EventStream
where
    S: Stream<Item = Result<Event, Failure>> + Send + 'static,
{
    Box::pin(s.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    use proptest::prelude::*;

    /// The byte-by-byte separator search the newline-jumping one replaced.
    fn event_end_reference(buf: &[u8]) -> Option<(usize, usize)> {
        (0..buf.len()).find_map(|i| {
            if buf.get(i..i + 2) == Some(b"\n\n") {
                Some((i, 2))
            } else if buf.get(i..i + 4) == Some(b"\r\n\r\n") {
                Some((i, 4))
            } else {
                None
            }
        })
    }

    fn same(a: &Option<Result<Event, Failure>>, b: &Option<Result<Event, Failure>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(Ok(Event::Done)), Some(Ok(Event::Done))) => true,
            (Some(Ok(Event::Raw(x))), Some(Ok(Event::Raw(y)))) => x.bytes() == y.bytes(),
            (Some(Ok(Event::Opaque(x))), Some(Ok(Event::Opaque(y)))) => x == y,
            (Some(Err(x)), Some(Err(y))) => x.class == y.class,
            _ => false,
        }
    }

    proptest! {
        // A fixed seed keeps the suite deterministic; raise PROPTEST_CASES to explore further.
        #![proptest_config(ProptestConfig {
            cases: 2000,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x55e0_0001),
            ..ProptestConfig::default()
        })]

        /// Separators are found where the byte-by-byte search finds them, whatever mix of
        /// `\r`, `\n` and other bytes surrounds them.
        #[test]
        fn event_end_agrees_with_the_byte_by_byte_search(
            buf in proptest::collection::vec(proptest::sample::select(vec![b'\r', b'\n', b'a', b':']), 0..40)
        ) {
            prop_assert_eq!(event_end(&buf), event_end_reference(&buf));
        }

        /// Events read through the single-line fast path read as the general path
        /// ([`parse_event_general`]) reads them.
        #[test]
        fn single_line_events_read_as_the_general_path(
            head in proptest::sample::select(vec!["data:", "data: ", "data:  ", "event: x\ndata: ", ": c\r\ndata:", "dat"]),
            body in proptest::sample::select(vec![
                "{\"a\":1}", "[DONE]", " [DONE] ", "{\"error\":{}}", "not json", "", "[1]",
                "{\"model\":\"m\",\"x\":\"\u{e9}\"}", "{\"a\":1}\r", "\u{a0}[DONE]",
            ]),
        ) {
            let raw = format!("{head}{body}");
            let fast = parse_event(Bytes::from(raw.clone()));
            let general = parse_event_general(&Bytes::from(raw.clone()));
            prop_assert!(same(&fast, &general), "{:?}: {:?} vs {:?}", raw, fast, general);
        }
    }

    /// Events split across chunks at any byte are reassembled; comments are skipped; the
    /// terminal `[DONE]` is recognised.
    #[tokio::test]
    async fn frames_events_across_chunk_boundaries() {
        let text = b": keepalive\n\ndata: {\"a\":1}\n\ndata: {\"b\":2}\r\n\r\ndata: [DONE]\n\n";
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .chunks(3)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let body = StreamBody::new(stream::iter(chunks));
        let got: Vec<_> = events(body).collect().await;
        let got: Vec<Option<Value>> = got.into_iter().map(|e| e.unwrap().json()).collect();
        assert_eq!(
            got,
            vec![
                Some(serde_json::json!({"a":1})),
                Some(serde_json::json!({"b":2})),
                None
            ]
        );
    }

    /// Delivered one byte at a time, separators straddling chunks included, events still
    /// frame correctly; each byte is scanned for a separator once, not once per chunk.
    #[tokio::test]
    async fn frames_events_delivered_byte_by_byte() {
        let big = "x".repeat(64 * 1024);
        let text = format!("data: {{\"a\":\"{big}\"}}\r\n\r\ndata: {{\"b\":2}}\n\ndata: [DONE]\n\n");
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = text
            .as_bytes()
            .chunks(1)
            .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
            .collect();
        let got: Vec<Option<Value>> = events(StreamBody::new(stream::iter(chunks)))
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|e| e.unwrap().json())
            .collect();
        assert_eq!(
            got,
            vec![
                Some(serde_json::json!({"a": big})),
                Some(serde_json::json!({"b":2})),
                None
            ]
        );
    }

    /// Data split over several `data:` lines reaches the client as one line (a raw newline
    /// inside a `data:` line would end the event early).
    #[test]
    fn multi_line_data_is_sent_on_one_line() {
        let Some(Ok(ev)) = parse_event(Bytes::from_static(b"data: {\"a\":\ndata: 1}")) else {
            panic!("not parsed");
        };
        assert_eq!(&encode(&ev)[..], b"data: {\"a\":1}\n\n");
        let Some(Ok(ev)) = parse_event(Bytes::from_static(b"data: {\"a\": 1}")) else {
            panic!("not parsed");
        };
        assert_eq!(&encode(&ev)[..], b"data: {\"a\": 1}\n\n");
    }

    /// An upstream error event is a failure, not data to pass on; an event that is not JSON is
    /// passed on as it came (an anomaly, not a failure).
    #[test]
    fn error_event_is_a_failure() {
        let ev = parse_event(Bytes::from_static(b"data: {\"error\":{\"message\":\"x\"}}"));
        assert!(matches!(
            ev,
            Some(Err(Failure {
                class: Class::ServerError,
                ..
            }))
        ));
        let ev = parse_event(Bytes::from_static(b"event: x\ndata: not json"));
        let Some(Ok(ev @ Event::Opaque(_))) = ev else {
            panic!("not opaque: {ev:?}");
        };
        assert_eq!(&encode(&ev)[..], b"event: x\ndata: not json\n\n");
    }
}
