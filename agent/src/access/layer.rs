//! The tower layer in front of every gRPC service: finds the caller, refuses a call its role
//! does not allow (`PERMISSION_DENIED` naming the role needed) before any handler runs, and
//! writes one audit record per mutating call, allowed or denied, when it has ended. A mutation
//! runs to its end on a task of its own, whether or not its client waits for the answer.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::FutureExt;
use http_body_util::BodyExt;
use hyper::http;
use tonic::body::Body;

use super::audit::{self, Audit, Record};
use super::{Peer, Policy, Role, UnixPolicy, mutating, required};

/// The largest request body read for an audit record (tonic refuses larger messages anyway).
const MAX_AUDITED_BODY: usize = 4 << 20;

/// Of a refused call's body only this much is read, for the audit record's target (UUIDs and
/// names come first), and only for this long: a caller without the role must not make the
/// agent buffer megabytes or wait on a body that never ends.
const DENIED_PREFIX: usize = 1024;
const DENIED_READ: std::time::Duration = std::time::Duration::from_secs(1);

/// Up to `max` bytes from the start of `body`, as many as arrive within `within`.
async fn prefix(mut body: Body, max: usize, within: std::time::Duration) -> bytes::Bytes {
    let mut buf = bytes::BytesMut::new();
    let _ = tokio::time::timeout(within, async {
        while buf.len() < max {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref() {
                        buf.extend_from_slice(data);
                    }
                }
                _ => break,
            }
        }
    })
    .await;
    buf.truncate(max);
    buf.freeze()
}

/// The start of a streamed request up to the end of its first gRPC message (a 5-byte header
/// with the length, then the message) or [`MAX_AUDITED_BODY`], and the body after it.
async fn first_message(mut body: Body) -> (bytes::Bytes, Body) {
    let mut buf = bytes::BytesMut::new();
    let whole = |buf: &bytes::BytesMut| {
        buf.len() >= 5
            && buf.len() >= 5 + u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize
    };
    while !whole(&buf) && buf.len() < MAX_AUDITED_BODY {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    buf.extend_from_slice(data);
                }
            }
            _ => break,
        }
    }
    (buf.freeze(), body)
}

#[derive(Clone)]
pub struct AccessLayer {
    policy: Arc<Policy>,
    audit: Arc<Audit>,
}

impl AccessLayer {
    pub fn new(policy: Policy, audit: Audit) -> AccessLayer {
        AccessLayer {
            policy: Arc::new(policy),
            audit: Arc::new(audit),
        }
    }
}

impl<S> tower::Layer<S> for AccessLayer {
    type Service = Access<S>;

    fn layer(&self, inner: S) -> Access<S> {
        Access {
            inner,
            policy: self.policy.clone(),
            audit: self.audit.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Access<S> {
    inner: S,
    policy: Arc<Policy>,
    audit: Arc<Audit>,
}

/// Who is calling, from where, and with which role.
struct Caller {
    who: String,
    from: String,
    role: Option<Role>,
}

fn caller(req: &http::Request<Body>, policy: &Policy) -> Caller {
    let unknown = Caller {
        who: "unknown".into(),
        from: "unknown".into(),
        role: None,
    };
    match req.extensions().get::<Peer>() {
        Some(Peer::Unix(info)) => info.peer_cred.map_or(unknown, |cred| {
            let (uid, gid) = (cred.uid(), cred.gid());
            let pid = cred.pid().map_or("?".into(), |p| p.to_string());
            Caller {
                who: format!("uid={uid} gid={gid} pid={pid}"),
                from: "unix".into(),
                role: unix_role(&policy.unix, uid, gid),
            }
        }),
        Some(Peer::Tls { remote, identity }) => Caller {
            who: format!(
                "certificate {}",
                identity.as_deref().unwrap_or("without identity")
            ),
            from: format!("tcp {remote}"),
            role: policy.certificate_role(identity.as_deref()),
        },
        None => unknown,
    }
}

fn unix_role(policy: &UnixPolicy, uid: u32, gid: u32) -> Option<Role> {
    let mut gids = vec![gid];
    if uid != 0 && !policy.groups.is_empty() {
        gids.extend(supplementary_groups(uid, gid));
    }
    policy.role(uid, &gids)
}

/// The groups of user `uid` from the group database (what the user's processes carry).
fn supplementary_groups(uid: u32, gid: u32) -> Vec<u32> {
    let Ok(Some(user)) = nix::unistd::User::from_uid(uid.into()) else {
        return Vec::new();
    };
    let Ok(name) = std::ffi::CString::new(user.name) else {
        return Vec::new();
    };
    nix::unistd::getgrouplist(&name, gid.into())
        .map(|gs| gs.into_iter().map(|g| g.as_raw()).collect())
        .unwrap_or_default()
}

/// `PermissionDenied` → `PERMISSION_DENIED`.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// The call's result as its response headers say: a trailers-only error carries its
/// `grpc-status` there; a response without one goes on to a body and an OK status.
fn result_of(headers: &http::HeaderMap) -> String {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or_else(|| "OK".into(), |c| code_name(tonic::Code::from_i32(c)))
}

impl<S> tower::Service<http::Request<Body>> for Access<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone that was made ready is the one to call.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        if !mutating(req.uri().path()) {
            return Box::pin(read(inner, req, policy));
        }
        // A mutation runs on a task of its own. A client that hangs up makes hyper drop the
        // future returned here, and with it only the wait for the answer: the mutation is not
        // cancelled half-way, and its audit line is written when it ends, in that task.
        let task = tokio::spawn(mutation(inner, req, policy, self.audit.clone()));
        Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                // Only when the runtime stops: `mutation` catches a handler's panic itself.
                Ok(tonic::Status::internal(format!("the call did not finish: {e}")).into_http())
            })
        })
    }
}

/// A call that changes nothing: refused without the role, else passed on; not audited.
async fn read<S>(
    mut inner: S,
    req: http::Request<Body>,
    policy: Arc<Policy>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let path = req.uri().path().to_string();
    let Caller { who, role, .. } = caller(&req, &policy);
    let needed = required(&path);
    if role.is_some_and(|r| r >= needed) {
        return inner.call(req).await;
    }
    Ok(denied(path.trim_start_matches('/'), needed, &who, role).into_http())
}

/// A mutating call, allowed or denied, to its end, and then its one audit record.
async fn mutation<S>(
    mut inner: S,
    req: http::Request<Body>,
    policy: Arc<Policy>,
    audit: Arc<Audit>,
) -> Result<http::Response<Body>, S::Error>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>,
{
    let started = Instant::now();
    let path = req.uri().path().to_string();
    let method = path.trim_start_matches('/').to_string();
    let Caller { who, from, role } = caller(&req, &policy);
    let needed = required(&path);
    let (parts, body) = req.into_parts();
    let mut record = Record {
        unix_ms: hvagent_core::now_unix_ms(),
        who: who.clone(),
        role: role.map_or("none", Role::as_str),
        from,
        method: method.clone(),
        target: String::new(),
        result: String::new(),
        duration_ms: 0.0,
    };
    let finish = |record: &mut Record, result: String| {
        record.result = result;
        record.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
        audit.record(record);
    };
    if role.is_none_or(|r| r < needed) {
        record.target = audit::target(&method, &prefix(body, DENIED_PREFIX, DENIED_READ).await);
        finish(&mut record, "PERMISSION_DENIED".into());
        return Ok(denied(&method, needed, &who, role).into_http());
    }
    let body = if crate::api::services::method(&path).streams_requests {
        // A streamed request lasts as long as its client (a console session): the record's
        // target comes from its first message, and everything goes on to the handler as it
        // arrives.
        let (first, rest) = first_message(body).await;
        record.target = audit::target(&method, &first);
        let first = futures_util::stream::once(async move {
            Ok::<_, tonic::Status>(hyper::body::Frame::data(first))
        });
        Body::new(http_body_util::StreamBody::new(
            futures_util::StreamExt::chain(first, http_body_util::BodyStream::new(rest)),
        ))
    } else {
        let bytes = match http_body_util::Limited::new(body, MAX_AUDITED_BODY)
            .collect()
            .await
        {
            Ok(c) => c.to_bytes(),
            Err(e) => {
                // Too large, or cut off by a client that went away: either way nothing was
                // done.
                let status = if e.is::<http_body_util::LengthLimitError>() {
                    tonic::Status::invalid_argument(format!("request body: {e}"))
                } else {
                    tonic::Status::cancelled(format!("request body cut short: {e}"))
                };
                finish(&mut record, code_name(status.code()));
                return Ok(status.into_http());
            }
        };
        record.target = audit::target(&method, &bytes);
        Body::new(http_body_util::Full::new(bytes))
    };
    let req = http::Request::from_parts(parts, body);
    // A handler that panics still ends in one audit line (and an INTERNAL answer).
    let (response, result) = match AssertUnwindSafe(inner.call(req)).catch_unwind().await {
        Ok(Ok(r)) => {
            let result = result_of(r.headers());
            (Ok(r), result)
        }
        Ok(Err(e)) => (Err(e), "INTERNAL".into()),
        Err(_) => (
            Ok(tonic::Status::internal(format!("{method} failed unexpectedly")).into_http()),
            "INTERNAL".into(),
        ),
    };
    finish(&mut record, result);
    response
}

fn denied(method: &str, needed: Role, who: &str, role: Option<Role>) -> tonic::Status {
    tonic::Status::permission_denied(format!(
        "{method} needs role {}; the caller ({who}) has {}",
        needed.as_str(),
        role.map_or("no role".to_string(), |r| format!("role {}", r.as_str()))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_as_grpc_spells_them() {
        assert_eq!(
            code_name(tonic::Code::PermissionDenied),
            "PERMISSION_DENIED"
        );
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        let mut h = http::HeaderMap::new();
        assert_eq!(result_of(&h), "OK");
        h.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(result_of(&h), "NOT_FOUND");
    }

    #[test]
    fn denials_name_the_role_needed() {
        let s = denied(
            "hvagent.v1.VmService/Create",
            Role::Controller,
            "uid=1000 gid=1000 pid=7",
            Some(Role::Reader),
        );
        assert_eq!(s.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            s.message(),
            "hvagent.v1.VmService/Create needs role controller; the caller (uid=1000 gid=1000 pid=7) has role reader"
        );
    }
}
