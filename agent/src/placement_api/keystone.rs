//! The Keystone v3 application-credential flow: `POST {auth_url}/v3/auth/tokens` with the
//! credential's id and secret; the token is the answer's `X-Subject-Token` header, valid until
//! the body's `token.expires_at`. The credential file is read at every token request, so a
//! rotated credential is used from the next token on.

use std::path::Path;

use serde::Deserialize;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum AuthError {
    #[error("credential_file {path}: {problem}")]
    Credential { path: String, problem: String },
    #[error("POST {url}: {problem}")]
    Request { url: String, problem: String },
    #[error("POST {url}: HTTP {status}: {detail}")]
    Refused {
        url: String,
        status: u16,
        detail: String,
    },
}

/// An application credential: its id and secret.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub id: String,
    pub secret: String,
}

/// A token and when to ask for the next one.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub value: String,
    pub expires_unix: u64,
    /// Renewed from here on: half its lifetime before it expires, at most 5 minutes before.
    pub renew_unix: u64,
}

impl Token {
    pub fn fresh(&self, now_unix: u64) -> bool {
        now_unix < self.renew_unix
    }
}

const RENEW_AT_MOST_BEFORE: u64 = 300;

/// Reads the credential file: TOML with `id` and `secret`.
pub fn read_credential(path: &Path) -> Result<Credential, AuthError> {
    let problem = |problem: String| AuthError::Credential {
        path: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| problem(e.to_string()))?;
    let credential: Credential = toml::from_str(&text).map_err(|e| {
        problem(format!(
            "expected id = \"...\" and secret = \"...\": {}",
            e.message()
        ))
    })?;
    if credential.id.is_empty() || credential.secret.is_empty() {
        return Err(problem("id and secret must not be empty".into()));
    }
    Ok(credential)
}

/// `{auth_url}/v3/auth/tokens`, whether `auth_url` names the version or not.
pub fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    let base = base.strip_suffix("/v3").unwrap_or(base);
    format!("{base}/v3/auth/tokens")
}

/// The request body of the application-credential method.
pub fn request_body(credential: &Credential) -> serde_json::Value {
    serde_json::json!({
        "auth": {
            "identity": {
                "methods": ["application_credential"],
                "application_credential": {
                    "id": credential.id,
                    "secret": credential.secret,
                }
            }
        }
    })
}

#[derive(Deserialize)]
struct Body {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    expires_at: String,
}

/// The token from Keystone's answer (status, `X-Subject-Token`, body), read at `now_unix`.
pub fn token_from(
    url: &str,
    status: u16,
    subject_token: Option<&str>,
    body: &str,
    now_unix: u64,
) -> Result<Token, AuthError> {
    if status != 201 {
        return Err(AuthError::Refused {
            url: url.to_string(),
            status,
            detail: body.chars().take(300).collect(),
        });
    }
    let problem = |problem: String| AuthError::Request {
        url: url.to_string(),
        problem,
    };
    let value = subject_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| problem("answer has no X-Subject-Token header".into()))?;
    let body: Body =
        serde_json::from_str(body).map_err(|e| problem(format!("answer body: {e}")))?;
    let expires_unix = parse_utc(&body.token.expires_at).ok_or_else(|| {
        problem(format!(
            "token.expires_at {:?} is not an ISO 8601 UTC time",
            body.token.expires_at
        ))
    })?;
    let lifetime = expires_unix.saturating_sub(now_unix);
    Ok(Token {
        value: value.to_string(),
        expires_unix,
        renew_unix: expires_unix - (lifetime / 2).min(RENEW_AT_MOST_BEFORE),
    })
}

/// Asks Keystone for a token with the credential in `credential_file`.
pub async fn issue(
    http: &reqwest::Client,
    auth_url: &str,
    credential_file: &Path,
) -> Result<Token, AuthError> {
    let credential = read_credential(credential_file)?;
    let url = tokens_url(auth_url);
    let request_error = |e: reqwest::Error| AuthError::Request {
        url: url.clone(),
        problem: e.to_string(),
    };
    let response = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(request_body(&credential).to_string())
        .send()
        .await
        .map_err(request_error)?;
    let status = response.status().as_u16();
    let subject = response
        .headers()
        .get("X-Subject-Token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response.text().await.map_err(request_error)?;
    token_from(
        &url,
        status,
        subject.as_deref(),
        &body,
        hvagent_core::now_unix(),
    )
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|+00:00)` as Unix seconds (Keystone writes UTC).
pub fn parse_utc(s: &str) -> Option<u64> {
    let (date, time) = s.split_once('T')?;
    let time = time
        .strip_suffix('Z')
        .or_else(|| time.strip_suffix("+00:00"))?;
    let time = time.split_once('.').map_or(time, |(whole, _)| whole);
    let num = |s: &str| s.parse::<u64>().ok();
    let d: Vec<u64> = date.split('-').map(num).collect::<Option<_>>()?;
    let t: Vec<u64> = time.split(':').map(num).collect::<Option<_>>()?;
    let [y, m, d] = <[u64; 3]>::try_from(d).ok()?;
    let [hh, mm, ss] = <[u64; 3]>::try_from(t).ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 || y < 1970
    {
        return None;
    }
    // Days from 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = (era * 146_097 + doe).checked_sub(719_468)?;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn keystone_times_are_read_as_utc() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_utc("2026-12-07T07:20:06.000000Z"),
            Some(1_796_628_006)
        );
        assert_eq!(parse_utc("2000-03-01T00:00:00+00:00"), Some(951_868_800));
        assert_eq!(parse_utc("2026-12-07 07:20:06Z"), None);
        assert_eq!(parse_utc("2026-12-07T07:20:06+02:00"), None);
        assert_eq!(parse_utc("2026-13-07T07:20:06Z"), None);
    }

    #[test]
    fn the_tokens_url_with_or_without_the_version() {
        for base in [
            "https://ks:5000",
            "https://ks:5000/",
            "https://ks:5000/v3",
            "https://ks:5000/v3/",
        ] {
            assert_eq!(tokens_url(base), "https://ks:5000/v3/auth/tokens", "{base}");
        }
        assert_eq!(
            tokens_url("https://c/identity"),
            "https://c/identity/v3/auth/tokens"
        );
    }

    #[test]
    fn the_token_and_when_to_renew_it() {
        let body = r#"{"token": {"expires_at": "1970-01-01T02:00:00.000000Z", "methods": ["application_credential"]}}"#;
        let t = token_from("u", 201, Some("gAAAA"), body, 0).unwrap();
        assert_eq!(t.value, "gAAAA");
        assert_eq!(t.expires_unix, 7200);
        // At most 5 minutes before it expires...
        assert_eq!(t.renew_unix, 6900);
        assert!(t.fresh(6899) && !t.fresh(6900));
        // ...and half its lifetime for short-lived ones.
        let short = token_from("u", 201, Some("x"), body, 7000).unwrap();
        assert_eq!(short.renew_unix, 7100);

        assert!(matches!(
            token_from("u", 401, None, r#"{"error": {"code": 401}}"#, 0),
            Err(AuthError::Refused { status: 401, .. })
        ));
        let no_header = token_from("u", 201, None, body, 0).unwrap_err();
        assert!(
            no_header.to_string().contains("X-Subject-Token"),
            "{no_header}"
        );
        let bad_time = token_from(
            "u",
            201,
            Some("x"),
            r#"{"token": {"expires_at": "soon"}}"#,
            0,
        )
        .unwrap_err();
        assert!(bad_time.to_string().contains("\"soon\""), "{bad_time}");
    }

    #[test]
    fn the_credential_file_needs_id_and_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cred.toml");
        std::fs::write(&path, "id = \"abc\"\nsecret = \"s3\"\n").unwrap();
        assert_eq!(
            read_credential(&path).unwrap(),
            Credential {
                id: "abc".into(),
                secret: "s3".into()
            }
        );
        std::fs::write(&path, "id = \"abc\"\n").unwrap();
        let e = read_credential(&path).unwrap_err().to_string();
        assert!(e.contains("cred.toml") && e.contains("secret"), "{e}");
        let e = read_credential(&dir.path().join("none"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("No such file"), "{e}");
        assert_eq!(
            request_body(&Credential {
                id: "i".into(),
                secret: "s".into()
            }),
            serde_json::json!({"auth": {"identity": {
                "methods": ["application_credential"],
                "application_credential": {"id": "i", "secret": "s"}}}})
        );
    }

    /// A one-request HTTP server answering `answer`; returns its address and what it was sent.
    async fn serve_once(answer: String) -> (String, tokio::task::JoinHandle<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            // Head, then the body its Content-Length announces.
            loop {
                let n = s.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).to_string();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length: ")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= len {
                        break;
                    }
                }
            }
            s.write_all(answer.as_bytes()).await.unwrap();
            s.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).to_string()
        });
        (format!("http://{addr}"), task)
    }

    #[tokio::test]
    async fn a_token_is_issued_over_http() {
        let body = r#"{"token": {"expires_at": "2099-01-01T00:00:00Z"}}"#;
        let (url, server) = serve_once(format!(
            "HTTP/1.1 201 Created\r\nX-Subject-Token: tok-1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cred = dir.path().join("cred.toml");
        std::fs::write(&cred, "id = \"app-id\"\nsecret = \"app-secret\"\n").unwrap();
        let token = issue(&reqwest::Client::new(), &format!("{url}/v3"), &cred)
            .await
            .unwrap();
        assert_eq!(token.value, "tok-1");
        assert_eq!(
            token.expires_unix,
            parse_utc("2099-01-01T00:00:00Z").unwrap()
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("POST /v3/auth/tokens HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.contains(r#""application_credential":{"id":"app-id","secret":"app-secret"}"#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn a_refused_credential_is_an_error_naming_the_status() {
        let body = r#"{"error": {"code": 401, "title": "Unauthorized"}}"#;
        let (url, _server) = serve_once(format!(
            "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ))
        .await;
        let dir = tempfile::tempdir().unwrap();
        let cred = dir.path().join("cred.toml");
        std::fs::write(&cred, "id = \"a\"\nsecret = \"b\"\n").unwrap();
        let e = issue(&reqwest::Client::new(), &url, &cred)
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::Refused { status: 401, .. }), "{e}");
    }
}
