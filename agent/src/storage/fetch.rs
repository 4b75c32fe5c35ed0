//! Image downloads over http(s): the request is made and checked here (status, length), then
//! the body is pumped by a task into a channel that the store's blocking import reads as a
//! plain `Read`, so local files and downloads share one copy, hash and detect path. The
//! import's deadline bounds the request and the body: past it the body task ends, so the
//! blocking reader returns instead of waiting on a server that sends a byte now and then.

use std::io::Read;
use std::time::Duration;

use bytes::Bytes;

use super::images::{Bounds, StoreError, past_deadline};

pub const MAX_URL_CHARS: usize = 2048;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// A server silent this long mid-download is given up on (the whole transfer is bounded by
/// `[storage] import_deadline_secs`).
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_REDIRECTS: usize = 5;
/// Chunks buffered between the download and the disk.
const CHUNKS_IN_FLIGHT: usize = 16;

/// `source_url`: http or https, with a host, at most 2048 characters.
pub fn parse_url(url: &str) -> Result<reqwest::Url, StoreError> {
    let invalid = |rule: String| StoreError::Invalid {
        field: "source_url",
        rule,
    };
    if url.len() > MAX_URL_CHARS {
        return Err(invalid(format!("at most {MAX_URL_CHARS} characters")));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| invalid(format!("not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "scheme must be http or https, got {:?}",
            parsed.scheme()
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("must name a host".into()));
    }
    Ok(parsed)
}

/// The URL as logs and messages show it: without a password.
pub fn redacted(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    }
    shown.to_string()
}

fn failed(url: &reqwest::Url, e: &reqwest::Error) -> StoreError {
    // The source chain says what really went wrong (DNS, refused, TLS, timeout).
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        reason = format!("{reason}: {s}");
        source = s.source();
    }
    StoreError::Fetch {
        url: redacted(url),
        reason,
        // Network trouble may pass; a request the server rejects will not.
        retryable: e.status().is_none_or(|s| s.is_server_error()),
    }
}

/// A download under way: its body as a `Read`, and its length when the server said it.
pub struct Download {
    pub total: Option<u64>,
    chunks: tokio::sync::mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
}

/// Sends the request and checks the answer; the body follows through the returned reader
/// until the bounds' deadline.
pub async fn open(url: &reqwest::Url, bounds: &Bounds) -> Result<Download, StoreError> {
    let deadline = tokio::time::Instant::from_std(bounds.deadline);
    let client = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .read_timeout(READ_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
        .user_agent(concat!("hvagent/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| failed(url, &e))?;
    let mut response = tokio::time::timeout_at(deadline, client.get(url.clone()).send())
        .await
        .map_err(|_| past_deadline("source_url", &bounds.limits))?
        .map_err(|e| failed(url, &e))?;
    let status = response.status();
    if !status.is_success() {
        return Err(StoreError::Fetch {
            url: redacted(url),
            reason: format!("the server answered {status}"),
            retryable: status.is_server_error(),
        });
    }
    let total = response.content_length();
    let (tx, chunks) = tokio::sync::mpsc::channel(CHUNKS_IN_FLIGHT);
    let shown = redacted(url);
    tokio::spawn(async move {
        loop {
            let next = match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => Ok(chunk),
                Ok(Ok(None)) => return,
                Ok(Err(e)) => Err(format!("{shown}: {e}")),
                Err(_) => Err(format!("{shown}: the import's deadline passed")),
            };
            let stop = next.is_err();
            // A reader that went away (the import failed) ends the download.
            if tx.send(next).await.is_err() || stop {
                return;
            }
        }
    });
    Ok(Download {
        total,
        chunks,
        current: Bytes::new(),
    })
}

impl Read for Download {
    /// Blocks for the next chunk: call it on a blocking thread.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls_with_a_host() {
        assert!(parse_url("https://images.example/debian.qcow2").is_ok());
        assert!(parse_url("http://127.0.0.1:8080/x").is_ok());
        for (bad, rule) in [
            ("ftp://host/x", "scheme must be http or https"),
            ("file:///etc/shadow", "scheme must be http or https"),
            ("not a url", "not a URL"),
            ("/local/path", "not a URL"),
        ] {
            let e = parse_url(bad).unwrap_err().to_string();
            assert!(e.starts_with("source_url: "), "{bad}: {e}");
            assert!(e.contains(rule), "{bad}: {e}");
        }
        let long = format!("https://h/{}", "a".repeat(MAX_URL_CHARS));
        assert!(
            parse_url(&long)
                .unwrap_err()
                .to_string()
                .contains("at most 2048")
        );
    }

    #[test]
    fn passwords_never_shown() {
        let url = parse_url("https://user:secret@host/img").unwrap();
        let shown = redacted(&url);
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("user"), "{shown}");
    }

    #[test]
    fn chunks_read_as_one_stream() {
        let (tx, chunks) = tokio::sync::mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"hello "))).unwrap();
        tx.try_send(Ok(Bytes::from_static(b"world"))).unwrap();
        drop(tx);
        let mut d = Download {
            total: None,
            chunks,
            current: Bytes::new(),
        };
        let mut out = String::new();
        d.read_to_string(&mut out).unwrap();
        assert_eq!(out, "hello world");

        let (tx, chunks) = tokio::sync::mpsc::channel(4);
        tx.try_send(Ok(Bytes::from_static(b"part"))).unwrap();
        tx.try_send(Err("connection reset".into())).unwrap();
        let mut d = Download {
            total: None,
            chunks,
            current: Bytes::new(),
        };
        let e = d.read_to_end(&mut Vec::new()).unwrap_err();
        assert!(e.to_string().contains("connection reset"), "{e}");
    }
}
