//! `Host` as RFC 9112 §3.2 and RFC 9113 §8.3.1 require: an HTTP/1.1 request without it, any
//! request with more than one, one whose value is not a host and optional port, or an HTTP/2
//! request whose `Host` names another authority than its `:authority`, is answered 400.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{Either, Ready, ready};
use http::uri::Authority;
use http::{Request, Version, header};
use tower::{Layer, Service};

use crate::body::Response;
use crate::error::Reason;

#[derive(Clone, Copy, Debug, Default)]
pub struct HostLayer;

impl<S> Layer<S> for HostLayer {
    type Service = HostCheck<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HostCheck { inner }
    }
}

#[derive(Clone, Debug)]
pub struct HostCheck<S> {
    inner: S,
}

/// What is wrong with the request's `Host`, if anything.
fn problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("the request has more than one Host header field");
    }
    let Some(host) = host else {
        return (req.version() == Version::HTTP_11 && req.uri().authority().is_none())
            .then_some("an HTTP/1.1 request must carry a Host header field");
    };
    let authority = match std::str::from_utf8(host.as_bytes())
        .ok()
        .and_then(|h| h.parse::<Authority>().ok())
    {
        Some(a) if !a.as_str().contains('@') => a,
        _ => return Some("the Host header field is not a host with an optional port"),
    };
    match (req.version(), req.uri().authority()) {
        (Version::HTTP_2, Some(a)) if *a != authority => {
            Some("the Host header field names another authority than :authority")
        }
        _ => None,
    }
}

impl<S, B> Service<Request<B>> for HostCheck<S>
where
    S: Service<Request<B>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<S::Future, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match problem(&req) {
            None => Either::Left(self.inner.call(req)),
            Some(why) => Either::Right(ready(Ok(Reason::BadHost { why }.refusal()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    /// One valid Host passes; none (HTTP/1.1), two, a malformed one, userinfo, or an HTTP/2
    /// Host other than `:authority` are refused; HTTP/1.0 and absolute-form need none.
    #[test]
    fn host_rules() {
        assert_eq!(
            problem(&req(Version::HTTP_11, "/v1/models", &["localhost:4000"])),
            None
        );
        assert_eq!(problem(&req(Version::HTTP_10, "/v1/models", &[])), None);
        assert_eq!(problem(&req(Version::HTTP_11, "http://a:1/v1/models", &[])), None);
        assert_eq!(
            problem(&req(Version::HTTP_2, "http://a:1/v1/models", &["a:1"])),
            None
        );
        assert!(problem(&req(Version::HTTP_11, "/v1/models", &[])).is_some());
        assert!(problem(&req(Version::HTTP_11, "/v1/models", &["a", "b"])).is_some());
        assert!(problem(&req(Version::HTTP_11, "/v1/models", &["a b"])).is_some());
        assert!(problem(&req(Version::HTTP_11, "/v1/models", &["u:p@a"])).is_some());
        assert!(problem(&req(Version::HTTP_11, "/v1/models", &["a/b"])).is_some());
        assert!(problem(&req(Version::HTTP_2, "http://a:1/v1/models", &["b:1"])).is_some());
    }
}
